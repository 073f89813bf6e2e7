//! TLS end to end, with the real binary: a `herd server --tls-cert --tls-key` process on an
//! ephemeral loopback port, a test CA generated here (rcgen) with a server certificate for
//! `127.0.0.1` and `localhost` and a client certificate, and `herd` client commands and a
//! `herd worker` process against it.
//!
//! Every client command gets its environment from [`client`], the one place this file says
//! what a client trusts and presents. Nothing sleeps for a fixed time: waits poll a condition
//! with [`herd_tests::wait_for`]. Child processes are killed when their guard is dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tempfile::TempDir;

mod support;

use support::{KillOnDrop, herd_command, run, wait_until};

/// What a client trusts and presents.
#[derive(Debug, Clone, Copy, Default)]
struct ClientSettings<'a> {
    /// `HERD_CA_BUNDLE`.
    ca_bundle: Option<&'a Path>,
    /// `HERD_CLIENT_CERT` and `HERD_CLIENT_KEY`.
    identity: Option<(&'a Path, &'a Path)>,
    /// `HERD_TOKEN_FILE`.
    token: Option<&'a Path>,
}

/// `herd --server URL ARGS` with the environment `settings` describe: the one function that
/// sets a client's environment in this file.
fn client(server_url: &str, settings: ClientSettings<'_>, args: &[&str]) -> Command {
    let mut command = herd_command();
    command.arg("--server").arg(server_url).args(args);
    if let Some(bundle) = settings.ca_bundle {
        command.env("HERD_CA_BUNDLE", bundle);
    }
    if let Some((cert, key)) = settings.identity {
        command
            .env("HERD_CLIENT_CERT", cert)
            .env("HERD_CLIENT_KEY", key);
    }
    if let Some(token) = settings.token {
        command.env("HERD_TOKEN_FILE", token);
    }
    command
}

/// A test CA, a server certificate it signed for `127.0.0.1` and `localhost`, a client
/// certificate it signed, and a second CA that signed nothing the server uses; PEM files in a
/// temporary directory, keys `0600`.
struct Certificates {
    directory: TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// The admin token the server (data directory `data` here) makes on its first start.
    admin_token: PathBuf,
    /// A token no server knows, for clients that fail before any server reads it.
    unknown_token: PathBuf,
}

impl Certificates {
    fn generate() -> Certificates {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = |name: &str| directory.path().join(name);
        let write = |name: &str, text: &str| {
            std::fs::write(path(name), text).expect("write a PEM file");
            std::fs::set_permissions(path(name), std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
            path(name)
        };
        let (ca_pem, issuer) = certificate_authority("herd test CA");
        let (other_ca_pem, _) = certificate_authority("another CA");
        let (server_cert, server_key) = leaf(
            &issuer,
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        );
        let (client_cert, client_key) = leaf(&issuer, vec!["test-worker".to_owned()]);
        Certificates {
            ca: write("ca.pem", &ca_pem),
            other_ca: write("other-ca.pem", &other_ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            admin_token: path("data").join("admin-token"),
            unknown_token: write("unknown-token", "herd_unknown"),
            directory,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    /// What a client that trusts the test CA and presents no certificate uses.
    fn trusting(&self) -> ClientSettings<'_> {
        ClientSettings {
            ca_bundle: Some(&self.ca),
            identity: None,
            token: Some(&self.admin_token),
        }
    }

    /// A worker token made on `server` with `settings` (as the admin), in a file.
    fn worker_token(&self, server: &TlsServer, settings: ClientSettings<'_>) -> PathBuf {
        let created = run(&mut client(
            &server.url,
            settings,
            &["token", "create", "--worker"],
        ));
        assert_eq!(created.code, 0, "{created:?}");
        let path = self.path("worker-token");
        std::fs::write(&path, &created.stdout).expect("write the worker token");
        path
    }

    /// [`trusting`](Self::trusting), presenting the client certificate.
    fn trusting_with_certificate(&self) -> ClientSettings<'_> {
        ClientSettings {
            ca_bundle: Some(&self.ca),
            identity: Some((&self.client_cert, &self.client_key)),
            token: Some(&self.admin_token),
        }
    }
}

/// A self-signed CA: its certificate's PEM and what signs with it.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("a CA key");
    let certificate = params.self_signed(&key).expect("a CA certificate");
    (certificate.pem(), Issuer::new(params, key))
}

/// A certificate for `names` signed by `issuer`: its PEM and its key's PEM.
fn leaf(issuer: &Issuer<'static, KeyPair>, names: Vec<String>) -> (String, String) {
    let params = CertificateParams::new(names).expect("leaf parameters");
    let key = KeyPair::generate().expect("a key");
    let certificate = params
        .signed_by(&key, issuer)
        .expect("a signed certificate");
    (certificate.pem(), key.serialize_pem())
}

/// A `herd server` with TLS on an ephemeral loopback port.
struct TlsServer {
    url: String,
    process: KillOnDrop,
}

impl TlsServer {
    /// Starts one with the test certificate; with `client_ca`, clients must present a
    /// certificate signed by it.
    fn start(certificates: &Certificates, client_ca: Option<&Path>) -> TlsServer {
        let port_file = certificates.path("server.addr");
        let _ = std::fs::remove_file(&port_file);
        let mut command = herd_command();
        command
            .args(["server", "--listen", "127.0.0.1:0", "--port-file"])
            .arg(&port_file)
            .arg("--data-dir")
            .arg(certificates.path("data"))
            .arg("--tls-cert")
            .arg(&certificates.server_cert)
            .arg("--tls-key")
            .arg(&certificates.server_key);
        if let Some(client_ca) = client_ca {
            command.arg("--tls-client-ca").arg(client_ca);
        }
        let mut process = KillOnDrop::spawn(&mut command, certificates.path("server.log"));
        let mut address = String::new();
        wait_until("the server to write its --port-file", || {
            process.assert_running("the server");
            address = std::fs::read_to_string(&port_file)
                .unwrap_or_default()
                .trim()
                .to_owned();
            !address.is_empty()
        });
        TlsServer {
            url: format!("https://{address}"),
            process,
        }
    }
}

#[test]
fn a_client_that_trusts_the_ca_connects_and_one_that_does_not_is_told_about_herd_ca_bundle() {
    let certificates = Certificates::generate();
    let server = TlsServer::start(&certificates, None);
    assert!(
        server
            .process
            .log()
            .contains(&format!("--server {}", server.url)),
        "the server should say clients use https://: {}",
        server.process.log()
    );

    let trusted = run(&mut client(
        &server.url,
        certificates.trusting(),
        &["task", "list", "--json"],
    ));
    assert_eq!(trusted.code, 0, "{trusted:?}");
    assert_eq!(trusted.stdout.trim(), "[]", "{trusted:?}");

    for settings in [
        ClientSettings::default(),
        ClientSettings {
            ca_bundle: Some(&certificates.other_ca),
            identity: None,
            token: Some(&certificates.admin_token),
        },
    ] {
        let untrusted = run(&mut client(&server.url, settings, &["task", "list"]));
        assert_ne!(untrusted.code, 0, "{untrusted:?}");
        assert!(
            untrusted.stderr.contains("not trusted")
                && untrusted.stderr.contains("HERD_CA_BUNDLE")
                && untrusted.stderr.contains("UnknownIssuer"),
            "{untrusted:?}"
        );
    }

    // The name in the URL must be one the certificate lists: `localhost` is, and works.
    let port = server.url.rsplit(':').next().expect("a port");
    let by_name = run(&mut client(
        &format!("https://localhost:{port}"),
        certificates.trusting(),
        &["task", "list"],
    ));
    assert_eq!(by_name.code, 0, "{by_name:?}");
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let certificates = Certificates::generate();
    let server = TlsServer::start(&certificates, Some(&certificates.ca));

    let without = run(&mut client(
        &server.url,
        certificates.trusting(),
        &["task", "list"],
    ));
    assert_ne!(without.code, 0, "{without:?}");
    assert!(
        without.stderr.contains("client certificate")
            && without.stderr.contains("HERD_CLIENT_CERT"),
        "{without:?}"
    );

    let with = run(&mut client(
        &server.url,
        certificates.trusting_with_certificate(),
        &["task", "list"],
    ));
    assert_eq!(
        with.code,
        0,
        "{with:?}\nserver log:\n{}",
        server.process.log()
    );
}

#[test]
fn a_worker_runs_a_task_over_mutual_tls() {
    let certificates = Certificates::generate();
    let server = TlsServer::start(&certificates, Some(&certificates.ca));
    let settings = certificates.trusting_with_certificate();
    let worker_token = certificates.worker_token(&server, settings);

    let mut worker = KillOnDrop::spawn(
        client(
            &server.url,
            ClientSettings {
                token: Some(&worker_token),
                ..settings
            },
            &[
                "worker",
                "--executor",
                "bare",
                "--batch",
                "tls",
                "--name",
                "tls-worker",
            ],
        )
        .arg("--work-dir")
        .arg(certificates.path("work")),
        certificates.path("worker.log"),
    );
    wait_until("the worker to connect over TLS", || {
        worker.assert_running("the worker");
        let listed = run(&mut client(
            &server.url,
            settings,
            &["worker", "list", "--json"],
        ));
        listed.code == 0 && listed.stdout.contains("\"connected\"")
    });

    let launched = run(&mut client(
        &server.url,
        settings,
        &["launch", "-b", "tls", "sh", "-c", "echo over tls"],
    ));
    assert_eq!(launched.code, 0, "{launched:?}");
    let id = launched.stdout.trim().to_owned();
    let waited = run(&mut client(
        &server.url,
        settings,
        &["batch", "wait", "tls"],
    ));
    assert_eq!(waited.code, 0, "{waited:?}\nworker log:\n{}", worker.log());
    assert!(waited.stdout.contains("1 succeeded"), "{waited:?}");
    let output = run(&mut client(&server.url, settings, &["task", "logs", &id]));
    assert_eq!(output.stdout, "over tls\n", "{output:?}");
}

#[test]
fn a_worker_that_does_not_trust_the_server_says_to_set_herd_ca_bundle() {
    let certificates = Certificates::generate();
    let server = TlsServer::start(&certificates, None);
    let mut worker = KillOnDrop::spawn(
        client(
            &server.url,
            ClientSettings {
                token: Some(&certificates.unknown_token),
                ..ClientSettings::default()
            },
            &["worker", "--executor", "bare", "--batch", "tls"],
        )
        .arg("--work-dir")
        .arg(certificates.path("work")),
        certificates.path("worker.log"),
    );
    wait_until("the worker to log why it cannot connect", || {
        worker.assert_running("the worker");
        let log = worker.log();
        log.contains("not trusted") && log.contains("HERD_CA_BUNDLE")
    });
}

#[test]
fn plaintext_on_an_address_other_hosts_reach_is_refused_before_listening() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let refused = run(herd_command()
        .args(["server", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(directory.path().join("data")));
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("without TLS")
            && refused.stderr.contains("in clear")
            && refused.stderr.contains("--tls-cert")
            && refused.stderr.contains("--insecure"),
        "{refused:?}"
    );

    let refused = run(herd_command()
        .args(["up", "--listen", "[::]:0", "--data-dir"])
        .arg(directory.path().join("up")));
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("--insecure"), "{refused:?}");
}

#[test]
fn a_client_refuses_plaintext_to_another_host_before_connecting() {
    // TEST-NET-1: nothing answers there; the refusal must come first, and at once.
    let started = std::time::Instant::now();
    let refused = run(&mut client(
        "http://192.0.2.1:4373",
        ClientSettings::default(),
        &["task", "list"],
    ));
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("HERD_INSECURE=1") && refused.stderr.contains("https://"),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the refusal waited for a connection: {:?}",
        started.elapsed()
    );

    let certificates = Certificates::generate();
    let worker = run(client(
        "http://192.0.2.1:4373",
        ClientSettings {
            token: Some(&certificates.unknown_token),
            ..ClientSettings::default()
        },
        &["worker", "--executor", "bare"],
    )
    .arg("--work-dir")
    .arg(certificates.path("work")));
    assert_ne!(worker.code, 0, "{worker:?}");
    assert!(worker.stderr.contains("HERD_INSECURE=1"), "{worker:?}");
}

#[test]
fn bad_tls_files_stop_the_server_naming_the_flag_and_the_file() {
    let certificates = Certificates::generate();
    let start = |cert: &Path, key: &Path| {
        run(herd_command()
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(certificates.path("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key))
    };

    let missing = certificates.path("missing.pem");
    let finished = start(&missing, &certificates.server_key);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(
        finished.stderr.contains("--tls-cert")
            && finished.stderr.contains(&*missing.to_string_lossy()),
        "{finished:?}"
    );

    // The key where the certificate should be, and the certificate where the key should be.
    let finished = start(&certificates.server_key, &certificates.server_cert);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(
        finished.stderr.contains("holds no certificate"),
        "{finished:?}"
    );

    // The client's key is not the server certificate's.
    let finished = start(&certificates.server_cert, &certificates.client_key);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("--tls-key"), "{finished:?}");

    std::fs::set_permissions(
        &certificates.server_key,
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod 644");
    let finished = start(&certificates.server_cert, &certificates.server_key);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(
        finished.stderr.contains("other users") && finished.stderr.contains("chmod 600"),
        "{finished:?}"
    );

    // Half a pair is a usage error from the command line itself.
    let finished = run(herd_command()
        .args(["server", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&certificates.server_cert));
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("--tls-key"), "{finished:?}");
}

//! The client transport: the one place a client of a herd server (the CLI, a worker, the test
//! harness) turns a server URL into a tonic [`Endpoint`], and a failed connection into words.
//!
//! - `https://` URLs get TLS (rustls with aws-lc-rs). The server's certificate must chain to
//!   the system's roots or to a CA in [`ClientTls`]'s bundle (`HERD_CA_BUNDLE`); a client
//!   certificate (`HERD_CLIENT_CERT` + `HERD_CLIENT_KEY`) is presented when one is given, for
//!   servers started with `--tls-client-ca`.
//! - `http://` URLs stay plaintext, and only to loopback (`127.0.0.0/8`, `::1`, `localhost`)
//!   unless the client was told the network is trusted (`HERD_INSECURE=1`): anything sent in
//!   clear (task specs, and the tokens every request will carry) could be read on the way.
//! - [`describe_failure`] names what went wrong in a failed connection's chain of errors, and
//!   for a TLS handshake says what to set (`HERD_CA_BUNDLE`, `HERD_CLIENT_CERT`...).
//!
//! Callers add their own timeouts and keep-alives to the [`Endpoint`] they get.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::pem::{FileError, read_certificates, read_private_key};

use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A PEM file of CA certificates trusted besides the system's roots.
pub const CA_BUNDLE_VARIABLE: &str = "HERD_CA_BUNDLE";
/// A PEM file with the certificate (and its chain) this client presents.
pub const CLIENT_CERT_VARIABLE: &str = "HERD_CLIENT_CERT";
/// A PEM file with the private key of [`CLIENT_CERT_VARIABLE`]'s certificate.
pub const CLIENT_KEY_VARIABLE: &str = "HERD_CLIENT_KEY";
/// `1` allows `http://` to a host that is not loopback (on a network you trust).
pub const INSECURE_VARIABLE: &str = "HERD_INSECURE";

/// Why a client cannot be set up to reach a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file named by a setting cannot be read, or does not hold what it should.
    #[error(transparent)]
    File(#[from] FileError),
    /// One half of a client certificate was given without the other.
    #[error(
        "{given} is set but {missing} is not; set both (PEM files) to present a client certificate, or neither"
    )]
    HalfIdentity {
        /// The variable that is set.
        given: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// A yes/no setting has another value.
    #[error("{variable}={value:?} is not understood; set it to 1 (yes) or 0 (no)")]
    InvalidFlag {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// The server URL cannot be used.
    #[error("`{url}` is not a server URL ({problem}); give http://HOST:PORT or https://HOST:PORT")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A plaintext URL to a host that is not loopback, without `HERD_INSECURE=1`.
    #[error(
        "refusing to connect to {url} without TLS: {host} is not a loopback address, and requests \
         (with their tokens and task secrets) would travel in clear; use an https:// URL, or set \
         HERD_INSECURE=1 if the network is trusted"
    )]
    Plaintext {
        /// The URL.
        url: String,
        /// Its host.
        host: String,
    },
    /// tonic refused the TLS settings.
    #[error(
        "cannot set up TLS for {url}: {cause}; check HERD_CA_BUNDLE, HERD_CLIENT_CERT and HERD_CLIENT_KEY"
    )]
    Tls {
        /// The URL.
        url: String,
        /// tonic's reason, with its causes.
        cause: String,
    },
}

/// How a client secures its connections: extra trusted CAs, an optional client certificate,
/// and whether plaintext to a host that is not loopback is allowed. The default trusts the
/// system's roots only, presents no certificate and allows plaintext to loopback only.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// The PEM of `HERD_CA_BUNDLE`, checked to hold at least one certificate.
    ca_bundle: Option<Certificate>,
    /// The PEM certificate and key presented to servers that ask for one.
    identity: Option<Identity>,
    /// Allow `http://` beyond loopback.
    insecure: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        formatter
            .debug_struct("ClientTls")
            .field("ca_bundle", &self.ca_bundle.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl ClientTls {
    /// The settings of the environment: `HERD_CA_BUNDLE`, `HERD_CLIENT_CERT` with
    /// `HERD_CLIENT_KEY`, `HERD_INSECURE`. Every file is read and checked now, so a mistake
    /// is reported before any connection, naming the variable and the file.
    pub fn from_env() -> Result<ClientTls, Error> {
        ClientTls::from_lookup(|name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) over any source of variables (empty values count as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<ClientTls, Error> {
        let path = |name: &str| {
            lookup(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        let mut tls = ClientTls::default();
        if let Some(bundle) = path(CA_BUNDLE_VARIABLE) {
            tls = tls.with_ca_bundle(&bundle)?;
        }
        match (path(CLIENT_CERT_VARIABLE), path(CLIENT_KEY_VARIABLE)) {
            (Some(cert), Some(key)) => tls = tls.with_client_certificate(&cert, &key)?,
            (Some(_), None) => {
                return Err(Error::HalfIdentity {
                    given: CLIENT_CERT_VARIABLE,
                    missing: CLIENT_KEY_VARIABLE,
                });
            }
            (None, Some(_)) => {
                return Err(Error::HalfIdentity {
                    given: CLIENT_KEY_VARIABLE,
                    missing: CLIENT_CERT_VARIABLE,
                });
            }
            (None, None) => {}
        }
        if let Some(value) = lookup(INSECURE_VARIABLE) {
            let value = value.to_string_lossy().trim().to_ascii_lowercase();
            tls.insecure = match value.as_str() {
                "1" | "true" | "yes" => true,
                "" | "0" | "false" | "no" => false,
                _ => {
                    return Err(Error::InvalidFlag {
                        variable: INSECURE_VARIABLE,
                        value,
                    });
                }
            };
        }
        Ok(tls)
    }

    /// Also trusts the CA certificates of the PEM file at `path`.
    pub fn with_ca_bundle(mut self, path: &Path) -> Result<ClientTls, Error> {
        let pem = read_certificates(CA_BUNDLE_VARIABLE, path, "the CA certificates to trust")?;
        self.ca_bundle = Some(Certificate::from_pem(pem));
        Ok(self)
    }

    /// Presents the certificate at `cert` (PEM, with its chain) and its key at `key` (PEM).
    pub fn with_client_certificate(mut self, cert: &Path, key: &Path) -> Result<ClientTls, Error> {
        let cert_pem = read_certificates(
            CLIENT_CERT_VARIABLE,
            cert,
            "this client's certificate (and its chain)",
        )?;
        let key_pem = read_private_key(CLIENT_KEY_VARIABLE, key)?;
        self.identity = Some(Identity::from_pem(cert_pem, key_pem));
        Ok(self)
    }

    /// Allows (`true`) or refuses `http://` to hosts that are not loopback.
    pub fn insecure(mut self, insecure: bool) -> ClientTls {
        self.insecure = insecure;
        self
    }
}

/// The endpoint for `url` (`http://HOST:PORT` or `https://HOST:PORT`) with `tls`'s settings:
/// TLS for `https://`, plaintext for `http://` to loopback (elsewhere only when `tls` allows
/// it). Nothing is connected yet.
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, Error> {
    let invalid = |problem: String| Error::InvalidUrl {
        url: url.to_owned(),
        problem,
    };
    let uri: tonic::transport::Uri = url.parse().map_err(|error| invalid(format!("{error}")))?;
    let host = uri
        .host()
        .ok_or_else(|| invalid("no host".to_owned()))?
        .to_owned();
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|error| invalid(error_chain(&error)))?;
    match uri.scheme_str() {
        Some("https") => with_tls(endpoint, url, tls),
        Some("http") if tls.insecure || is_loopback(&host) => Ok(endpoint),
        Some("http") => Err(Error::Plaintext {
            url: url.to_owned(),
            host,
        }),
        _ => Err(invalid("it must start with http:// or https://".to_owned())),
    }
}

fn with_tls(endpoint: Endpoint, url: &str, tls: &ClientTls) -> Result<Endpoint, Error> {
    let mut config = ClientTlsConfig::new();
    if let Some(bundle) = &tls.ca_bundle {
        config = config.ca_certificate(bundle.clone());
    }
    if let Some(identity) = &tls.identity {
        config = config.identity(identity.clone());
    }
    match endpoint
        .clone()
        .tls_config(config.clone().with_native_roots())
    {
        Ok(endpoint) => Ok(endpoint),
        // A host without a system CA store (a bare container) still reaches a server whose
        // CA is in the bundle; tonic refuses native roots when it finds none.
        Err(_) if tls.ca_bundle.is_some() => {
            endpoint.tls_config(config).map_err(|error| Error::Tls {
                url: url.to_owned(),
                cause: error_chain(&error),
            })
        }
        Err(error) => Err(Error::Tls {
            url: url.to_owned(),
            cause: format!(
                "{}; if this host has no system CA certificates, set HERD_CA_BUNDLE to the server's CA",
                error_chain(&error)
            ),
        }),
    }
}

/// Whether `host` (a URL's host: a name, an IPv4 address, a bracketed IPv6 address) is this
/// machine's loopback.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a failed connection (or a call that failed on its transport) says to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The TLS handshake failed: the message names the cause and the setting that fixes it.
    Tls(String),
    /// Anything else (refused, unreachable, reset): the innermost cause.
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Tls(message) | Failure::Other(message) => formatter.write_str(message),
        }
    }
}

/// Names what went wrong in `error`'s chain, for a connection to `url` with `tls`'s settings:
/// a TLS handshake failure with what to set (`HERD_CA_BUNDLE` for a server certificate the
/// client does not trust), or else the innermost cause (e.g. "Connection refused") rather
/// than tonic's layers of wrapping.
pub fn describe_failure(
    error: &(dyn std::error::Error + 'static),
    url: &str,
    tls: &ClientTls,
) -> Failure {
    if let Some(tls_error) = find_rustls_error(error) {
        return Failure::Tls(describe_tls(tls_error));
    }
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    if let Some(alert) = alert_in_text(&innermost.to_string()) {
        return Failure::Tls(describe_tls(&rustls::Error::AlertReceived(alert)));
    }
    // In TLS 1.3 the client's side of the handshake is done before the server checks the
    // client's certificate, so a server that wants one usually shows up as a connection
    // closed under the first call, its alert unread.
    // Depending on which side notices first, that is an I/O error (broken pipe, reset) or
    // hyper's request canceled because "connection closed" (hyper's error is not reachable
    // from here, only its words).
    let closed = innermost.to_string() == "connection closed"
        || innermost
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io_error| {
                matches!(
                    io_error.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                )
            });
    if closed && url.starts_with("https://") && tls.identity.is_none() {
        return Failure::Tls(format!(
            "the server closed the connection ({innermost}); if it requires client \
             certificates (--tls-client-ca), set {CLIENT_CERT_VARIABLE} and {CLIENT_KEY_VARIABLE} \
             to PEM files of a certificate signed by the CA it trusts"
        ));
    }
    Failure::Other(innermost.to_string())
}

/// The rustls error in `error`'s chain. rustls's errors reach tonic inside an `io::Error`,
/// whose `source()` skips the error it wraps, so each `io::Error` is opened too.
fn find_rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io_error| io_error.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(found) = find_rustls_error(inner) {
                return Some(found);
            }
        }
        current = error.source();
    }
    None
}

/// The alert a server sent, from rustls's words for it ("received fatal alert: NAME") when
/// the error itself did not survive: h2 keeps only the kind and text of an I/O error it
/// passes on to every stream of the connection.
fn alert_in_text(text: &str) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription;
    let name = text.split("received fatal alert: ").nth(1)?;
    let name = name.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    [
        AlertDescription::CertificateRequired,
        AlertDescription::BadCertificate,
        AlertDescription::UnknownCA,
        AlertDescription::CertificateUnknown,
        AlertDescription::CertificateExpired,
        AlertDescription::DecryptError,
        AlertDescription::HandshakeFailure,
    ]
    .into_iter()
    .find(|alert| format!("{alert:?}") == name)
}

fn describe_tls(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError};
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate is not issued for this address ({error}); connect with a \
             name or address the certificate lists, or reissue it with this one"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!(
            "the server's certificate is outside its validity period ({error}); renew it, or \
             check this host's clock"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the server's certificate is not trusted ({error}); set {CA_BUNDLE_VARIABLE} to a PEM \
             file holding the CA that signed it"
        ),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "the server requires a client certificate ({error}); set {CLIENT_CERT_VARIABLE} and \
             {CLIENT_KEY_VARIABLE} to PEM files of a certificate signed by the CA the server \
             trusts (its --tls-client-ca)"
        ),
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::DecryptError,
        ) => format!(
            "the server refused this client's certificate ({error}); use one signed by the CA \
             the server trusts (its --tls-client-ca), in {CLIENT_CERT_VARIABLE} and \
             {CLIENT_KEY_VARIABLE}"
        ),
        rustls::Error::InvalidMessage(_) => format!(
            "the TLS handshake failed ({error}); the server may not use TLS: use an http:// URL \
             for it, or start it with --tls-cert and --tls-key"
        ),
        other => format!(
            "the TLS handshake failed ({other}); check the server's --tls-* settings and \
             {CA_BUNDLE_VARIABLE}"
        ),
    }
}

/// An error and its causes on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        current = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(variables: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let variables: Vec<(String, String)> = variables
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        move |name| {
            variables
                .iter()
                .find(|(variable, _)| variable == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    fn message(result: Result<ClientTls, Error>) -> String {
        result.expect_err("the settings are refused").to_string()
    }

    #[test]
    fn a_missing_bundle_names_the_file_and_the_variable() {
        let error = message(ClientTls::from_lookup(lookup(&[(
            CA_BUNDLE_VARIABLE,
            "/nonexistent/ca.pem",
        )])));
        assert!(
            error.contains("/nonexistent/ca.pem") && error.contains("HERD_CA_BUNDLE"),
            "{error}"
        );
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let empty = directory.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let path = empty.to_str().expect("a UTF-8 path");
        let error = message(ClientTls::from_lookup(lookup(&[(
            CA_BUNDLE_VARIABLE,
            path,
        )])));
        assert!(
            error.contains(path)
                && error.contains("HERD_CA_BUNDLE")
                && error.contains("no certificate"),
            "{error}"
        );
        let broken = directory.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let path = broken.to_str().expect("a UTF-8 path");
        let error = message(ClientTls::from_lookup(lookup(&[(
            CA_BUNDLE_VARIABLE,
            path,
        )])));
        assert!(
            error.contains(path) && error.contains("not valid PEM"),
            "{error}"
        );
    }

    #[test]
    fn a_key_file_without_a_key_is_refused() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let cert = directory.path().join("cert.pem");
        // Any syntactically valid certificate block will do: only the key is at fault here.
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let key = directory.path().join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let error = message(ClientTls::default().with_client_certificate(&cert, &key));
        assert!(
            error.contains("HERD_CLIENT_KEY") && error.contains("no private key"),
            "{error}"
        );
    }

    #[test]
    fn half_a_client_certificate_is_refused() {
        let error = message(ClientTls::from_lookup(lookup(&[(
            CLIENT_CERT_VARIABLE,
            "/x/cert.pem",
        )])));
        assert!(error.contains("HERD_CLIENT_KEY is not"), "{error}");
        let error = message(ClientTls::from_lookup(lookup(&[(
            INSECURE_VARIABLE,
            "maybe",
        )])));
        assert!(error.contains("HERD_INSECURE"), "{error}");
    }

    #[test]
    fn plaintext_goes_only_to_loopback_unless_insecure() {
        let tls = ClientTls::default();
        for url in [
            "http://127.0.0.1:4373",
            "http://127.8.9.10:1",
            "http://localhost:4373",
            "http://[::1]:4373",
        ] {
            assert!(endpoint(url, &tls).is_ok(), "{url}");
        }
        for url in [
            "http://192.0.2.1:4373",
            "http://herd.example.org:4373",
            "http://[2001:db8::1]:1",
        ] {
            let error = endpoint(url, &tls)
                .expect_err("plaintext beyond loopback")
                .to_string();
            assert!(
                error.contains("HERD_INSECURE=1") && error.contains("https://"),
                "{error}"
            );
        }
        let insecure = ClientTls::default().insecure(true);
        assert!(endpoint("http://192.0.2.1:4373", &insecure).is_ok());
        let error = endpoint("ftp://192.0.2.1:1", &tls)
            .expect_err("not http")
            .to_string();
        assert!(error.contains("http://HOST:PORT"), "{error}");
    }

    #[test]
    fn tls_failures_name_the_setting_that_fixes_them() {
        let untrusted = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        // As tokio-rustls reports it, wrapped once more as a transport would.
        let wrapped = std::io::Error::other(untrusted);
        let tls = ClientTls::default();
        let Failure::Tls(message) = describe_failure(&wrapped, "https://h:1", &tls) else {
            panic!("not recognized as a TLS failure");
        };
        assert!(
            message.contains("not trusted")
                && message.contains("UnknownIssuer")
                && message.contains("HERD_CA_BUNDLE"),
            "{message}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            describe_failure(&refused, "https://h:1", &tls),
            Failure::Other(_)
        ));
        // A connection closed under the first call, without a client certificate: the
        // server may want one.
        let closed = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let Failure::Tls(message) = describe_failure(&closed, "https://h:1", &tls) else {
            panic!("a closed TLS connection without a client certificate should hint at one");
        };
        assert!(message.contains("HERD_CLIENT_CERT"), "{message}");
        assert!(matches!(
            describe_failure(&closed, "http://h:1", &tls),
            Failure::Other(_)
        ));
        // The server's alert, as h2 passes it on: only its text is left.
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        let Failure::Tls(message) = describe_failure(&alert, "https://h:1", &tls) else {
            panic!("the alert's text should be recognized");
        };
        assert!(
            message.contains("requires a client certificate")
                && message.contains("HERD_CLIENT_KEY"),
            "{message}"
        );
    }
}

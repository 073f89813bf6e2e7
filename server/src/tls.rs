//! The server's TLS: its certificate and key (`--tls-cert`, `--tls-key`) and, for mutual TLS,
//! the CA that must have signed every client's certificate (`--tls-client-ca`).
//!
//! [`Tls::from_files`] reads and checks everything at start, so a wrong file stops the server
//! with a message naming the flag and the file rather than failing every handshake later. A
//! key file that other users can read is refused (like ssh does); group-readable is allowed,
//! for the usual `root:ssl-cert 0640` layout.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use herd_proto::pem::{read_certificates, read_private_key};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::Error;

/// The server's certificate and key, and the client CA when clients must present a
/// certificate; checked, ready to serve.
#[derive(Clone)]
pub struct Tls {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        formatter
            .debug_struct("Tls")
            .field("requires_client_certificates", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the PEM files of `--tls-cert` (the certificate and its chain), `--tls-key` and
    /// `--tls-client-ca`, and checks that they make a working TLS setup.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Tls, Error> {
        let cert = read_certificates(
            "--tls-cert",
            cert,
            "the server's certificate (and its chain)",
        )?;
        refuse_exposed_key(key)?;
        let key_pem = read_private_key("--tls-key", key)?;
        let client_ca = client_ca
            .map(|path| {
                read_certificates(
                    "--tls-client-ca",
                    path,
                    "the CA certificates that sign client certificates",
                )
            })
            .transpose()?;
        let tls = Tls {
            cert,
            key: key_pem,
            client_ca,
        };
        install_crypto_provider();
        // tonic builds rustls's configuration here: a key that is not the certificate's, or
        // a client CA rustls cannot use, is refused now.
        tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .map_err(|error| Error::TlsSetup(crate::chain(&error)))?;
        Ok(tls)
    }

    /// Whether clients must present a certificate signed by `--tls-client-ca`.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// tonic's configuration: a client without a valid certificate is refused when a client
    /// CA is set.
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        match &self.client_ca {
            Some(client_ca) => config.client_ca_root(Certificate::from_pem(client_ca)),
            None => config,
        }
    }
}

/// rustls picks its cryptography from the process's default provider; with more than one
/// compiled in (other crates bring ring) it cannot choose, so herd says: aws-lc-rs.
pub(crate) fn install_crypto_provider() {
    // An error means a provider is already installed, which is as good.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Refuses a key file that users other than its owner and group can read.
fn refuse_exposed_key(path: &Path) -> Result<(), Error> {
    let Ok(metadata) = std::fs::metadata(path) else {
        // Unreadable: `read_private_key` says why.
        return Ok(());
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        return Err(Error::KeyExposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(cert: &Path, key: &Path) -> String {
        crate::chain(&Tls::from_files(cert, key, None).expect_err("the files are refused"))
    }

    #[test]
    fn unusable_files_are_named_with_their_flag() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let missing = directory.path().join("missing.pem");
        let key = directory.path().join("key.pem");
        std::fs::write(&key, "not a key").expect("write");
        let message = refusal(&missing, &key);
        assert!(
            message.contains("--tls-cert") && message.contains(&*missing.to_string_lossy()),
            "{message}"
        );

        let garbage = directory.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").expect("write");
        let message = refusal(&garbage, &key);
        assert!(
            message.contains("--tls-cert") && message.contains("holds no certificate"),
            "{message}"
        );

        // A syntactically valid certificate block, so that the key is what is judged.
        let cert = directory.path().join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let message = refusal(&cert, &key);
        assert!(
            message.contains("--tls-key") && message.contains("no private key"),
            "{message}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let message = refusal(&cert, &key);
        assert!(
            message.contains("other users") && message.contains("mode 644"),
            "{message}"
        );
    }
}

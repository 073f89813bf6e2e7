//! PEM files of certificates and keys, read and checked once for both sides of a connection:
//! the server's `--tls-cert`, `--tls-key` and `--tls-client-ca`, a client's `HERD_CA_BUNDLE`,
//! `HERD_CLIENT_CERT` and `HERD_CLIENT_KEY`. A [`FileError`] names the setting and the file,
//! so a mistake is reported at start, not as a failed handshake later.

use std::path::{Path, PathBuf};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read {path} (from {setting}): {cause}; point {setting} at a readable PEM file", path = path.display())]
    Unreadable {
        /// The flag or environment variable that named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        cause: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("{path} (from {setting}) {problem}; point {setting} at a PEM file holding {expected}", path = path.display())]
    Invalid {
        /// The flag or environment variable that named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What it should hold.
        expected: &'static str,
    },
}

/// Reads a PEM file that must hold at least one certificate (`expected` says which, for the
/// message); its bytes.
pub fn read_certificates(
    setting: &'static str,
    path: &Path,
    expected: &'static str,
) -> Result<Vec<u8>, FileError> {
    let pem = read(setting, path)?;
    let invalid = |problem: String| FileError::Invalid {
        setting,
        path: path.to_owned(),
        problem,
        expected,
    };
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|error| invalid(format!("is not valid PEM ({error})")))?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid(
            "holds no certificate (no -----BEGIN CERTIFICATE----- block)".to_owned(),
        ));
    }
    Ok(pem)
}

/// Reads a PEM file that must hold a private key (PKCS#8, PKCS#1 or SEC1); its bytes.
pub fn read_private_key(setting: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    let pem = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| FileError::Invalid {
        setting,
        path: path.to_owned(),
        problem: format!("holds no private key ({error})"),
        expected: "a private key (-----BEGIN PRIVATE KEY-----)",
    })?;
    Ok(pem)
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|cause| FileError::Unreadable {
        setting,
        path: path.to_owned(),
        cause,
    })
}

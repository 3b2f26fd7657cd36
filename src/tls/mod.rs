//! TLS with rustls: the crypto provider this build was made with, PEM files read into what
//! rustls takes, and the two ends: [`server`] (what `--tls-cert`/`--tls-key` serve, reloaded
//! on SIGHUP or when the files change) and [`client`] (the gateway's and the health check's
//! connections to `https://` URLs). Every error names the flag whose file it is about.

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{ClientSettings, client_config};
pub use server::{ServerSettings, ServerTls};

/// The crypto provider this build uses: ring (the default feature), or aws-lc-rs when built
/// with the `aws-lc-rs` feature (bench/RESULTS.md, "TLS crypto provider", has the measurement
/// behind the default).
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return Arc::new(rustls::crypto::ring::default_provider());
}

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("build with a rustls crypto provider: the `ring` (default) or `aws-lc-rs` feature");

/// The provider's name, for the start-up log line.
pub const PROVIDER: &str = if cfg!(feature = "aws-lc-rs") {
    "aws-lc-rs"
} else {
    "ring"
};

/// A TLS setting that cannot be used: the flag it came from, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    /// The flag, as `--tls-cert`.
    pub flag: &'static str,
    pub message: String,
}

impl TlsError {
    pub fn new(flag: &'static str, message: impl Into<String>) -> TlsError {
        TlsError {
            flag,
            message: message.into(),
        }
    }
}

/// A PEM file named by `flag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFile {
    pub flag: &'static str,
    pub path: PathBuf,
}

impl PemFile {
    pub fn new(flag: &'static str, path: impl Into<PathBuf>) -> PemFile {
        PemFile {
            flag,
            path: path.into(),
        }
    }

    fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|err| self.error(format!("cannot read it: {err}")))
    }

    fn error(&self, why: impl std::fmt::Display) -> TlsError {
        TlsError::new(self.flag, format!("{}: {why}", self.path.display()))
    }

    /// Every certificate in the file, in order (a chain: the end entity first). At least one.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = self.read()?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| self.error(format!("not a PEM certificate file: {err}")))?;
        if certs.is_empty() {
            return Err(self.error("no CERTIFICATE block in the file"));
        }
        Ok(certs)
    }

    /// The file's private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let pem = self.read()?;
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|err| self.error(format!("no usable PEM private key in the file: {err}")))
    }

    /// What changes when the file is replaced (a Kubernetes Secret's update swaps a symlink,
    /// which the metadata follows): modification time, size and inode.
    fn stamp(&self) -> Option<Stamp> {
        stamp(&self.path)
    }
}

/// A file's identity and age, to notice it was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// A root store from the certificates in `file`, each of which must be usable as a root.
fn roots(file: &PemFile) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in file.certificates()? {
        roots
            .add(cert)
            .map_err(|err| file.error(format!("not a usable CA certificate: {err}")))?;
    }
    Ok(roots)
}

/// The protocol versions both ends speak: TLS 1.3 and 1.2.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

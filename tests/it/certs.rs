//! Certificates made at test time (rcgen), written to a directory of the test's own that is
//! removed when the [`Pki`] is dropped: a CA, servers' chains and keys (ECDSA P-256, RSA or
//! Ed25519) and clients' for mutual TLS. No private key is ever committed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// The key types a certificate can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Ecdsa,
    Rsa,
    Ed25519,
}

impl Alg {
    fn key(self) -> KeyPair {
        let alg = match self {
            Alg::Ecdsa => &rcgen::PKCS_ECDSA_P256_SHA256,
            Alg::Rsa => &rcgen::PKCS_RSA_SHA256,
            Alg::Ed25519 => &rcgen::PKCS_ED25519,
        };
        KeyPair::generate_for(alg).expect("generate a key")
    }
}

/// A certificate and key written as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The chain: the certificate, then its CA's.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test's own CA and the files it wrote.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    name: String,
}

impl Pki {
    /// A fresh CA named `name`, in a fresh directory.
    pub fn new(name: &str) -> Pki {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "m2-pki-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the pki directory");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, Alg::Ecdsa.key()).expect("sign the CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        Pki {
            dir,
            ca,
            name: name.to_owned(),
        }
    }

    /// The CA's certificate (what clients trust, or `--tls-client-ca`).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate for localhost, 127.0.0.1 and ::1 with this serial, signed by the
    /// CA; written as `<file>.pem` (chain) and `<file>.key`.
    pub fn server(&self, file: &str, alg: Alg, serial: u64) -> Pair {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("a DNS name")),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(file, params, alg, serial)
    }

    /// A client certificate (for mutual TLS) with this serial, signed by the CA.
    pub fn client(&self, file: &str, serial: u64) -> Pair {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} client {file}", self.name));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(file, params, Alg::Ecdsa, serial)
    }

    fn leaf(&self, file: &str, mut params: CertificateParams, alg: Alg, serial: u64) -> Pair {
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if alg == Alg::Rsa {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        let key = alg.key();
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("sign the certificate");
        let pair = Pair {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&pair.cert, format!("{}{}", cert.pem(), self.ca.pem()))
            .expect("write the chain");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write the key");
        pair
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

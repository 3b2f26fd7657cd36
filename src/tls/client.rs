//! The client end: what the gateway (`--upstream https://…`) and `microservice2 healthcheck
//! https://…` connect with. Server certificates are verified against `--upstream-ca` (or
//! `--ca`), else the system's roots; a client certificate is presented for mutual TLS when one
//! is given; `--upstream-insecure` (`--insecure`) verifies nothing but the handshake's own
//! signatures.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::{PemFile, TlsError, VERSIONS, provider, roots};

/// How a client verifies servers and proves itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSettings {
    /// The CA certificates that sign the servers' certificates; the system's roots when unset.
    pub ca: Option<PemFile>,
    /// A certificate chain and its key, presented to servers that ask (mutual TLS).
    pub identity: Option<(PemFile, PemFile)>,
    /// Accept any server certificate.
    pub insecure: bool,
}

/// A client configuration for `settings`, offering `alpn` (none: no ALPN).
pub fn client_config(
    settings: &ClientSettings,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(VERSIONS)
        .map_err(|err| TlsError::new("--upstream", err.to_string()))?;
    let builder = if settings.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        let roots = match &settings.ca {
            Some(ca) => roots(ca)?,
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match &settings.identity {
        Some((cert, key)) => {
            let chain = cert.certificates()?;
            builder
                .with_client_auth_cert(chain, key.private_key()?)
                .map_err(|err| key.error(format!("does not go with {}: {err}", cert.flag)))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|proto| proto.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The system's trusted roots (`/etc/ssl/certs` and the like); those that cannot be read are
/// left out, and an empty store simply verifies nothing.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system root certificates found; https upstreams need --upstream-ca");
    }
    roots
}

/// `--upstream-insecure`: every certificate is accepted; the handshake's signatures are still
/// checked, so the connection is encrypted to whoever holds the key it presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! TLS client settings shared by the signaling server's HTTP clients (its
//! Nextcloud backends, etcd) and the MCU proxy's connections to others.

use std::sync::Arc;
use tracing::debug;

/// TLS client settings: the system's root certificates, or (with
/// `skipverify`, development only) no certificate check at all.
pub fn tls_client_config(skip_verify: bool) -> rustls::ClientConfig {
    if skip_verify {
        return rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAll::new()))
            .with_no_client_auth();
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_roots() {
        let _ = roots.add(cert);
    }
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

pub fn rustls_native_roots() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let result = rustls_native_certs::load_native_certs();
    for e in &result.errors {
        debug!(error = %e, "could not load a native root certificate");
    }
    result.certs
}

mod insecure {
    //! Certificate "verification" for `[backend] skipverify`: accepts anything.
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    pub struct AcceptAll(Vec<SignatureScheme>);

    impl AcceptAll {
        pub fn new() -> Self {
            AcceptAll(
                rustls::crypto::ring::default_provider()
                    .signature_verification_algorithms
                    .supported_schemes(),
            )
        }
    }

    impl ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.clone()
        }
    }
}

//! The rustls client configuration: which certificates, which key exchange, which suites.
//!
//! For side-by-side comparisons the client decides what every server negotiates, so it offers
//! only TLS 1.3 AES-GCM suites and the X25519 group by default (rustls would also offer
//! X25519MLKEM768, which nginx and HAProxy from Debian do not speak, while Portcullis would pick
//! it: the servers would then do different work).

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CipherSuite, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    SupportedProtocolVersion,
};

/// Server names one connection task's session store remembers: a task talks to one server
/// name, so a handful is plenty (rustls keeps a few TLS 1.3 tickets per name).
const SESSION_CACHE_ENTRIES: usize = 4;

/// The ALPN protocol offered: the gateway speaks HTTP/1.1 only.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Key-exchange groups offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyExchange {
    /// X25519 only: what nginx and HAProxy (OpenSSL 3.0) and Portcullis all speak.
    X25519,
    /// rustls' defaults (X25519MLKEM768 first).
    Default,
}

/// Protocol versions offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersions {
    #[value(name = "1.3")]
    Tls13,
    #[value(name = "1.2")]
    Tls12,
    Any,
}

/// Where the client's certificates come from.
#[derive(Debug, Clone)]
pub struct TlsFiles<'a> {
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    /// `None`: the server certificate is not checked (`--insecure`).
    pub cacert: Option<&'a Path>,
}

/// Builds the shared client config (resumption off; see [`with_resumption`]).
pub fn build(
    files: &TlsFiles<'_>,
    kx: KeyExchange,
    versions: TlsVersions,
) -> Result<ClientConfig, String> {
    let mut provider = aws_lc_rs::default_provider();
    if kx == KeyExchange::X25519 {
        provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    }
    provider.cipher_suites.retain(|s| {
        matches!(
            s.suite(),
            CipherSuite::TLS13_AES_256_GCM_SHA384
                | CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    let versions: &[&'static SupportedProtocolVersion] = match versions {
        TlsVersions::Tls13 => &[&rustls::version::TLS13],
        TlsVersions::Tls12 => &[&rustls::version::TLS12],
        TlsVersions::Any => rustls::DEFAULT_VERSIONS,
    };
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match files.cacert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, &e))? {
                roots
                    .add(cert.map_err(|e| pem_error(path, &e))?)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider })),
    };
    let mut config = match (files.cert, files.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_error(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("--cert and --key go together".to_owned()),
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// A copy of `base` for one connection task: with resumption, its own session store (no lock
/// shared with other tasks or threads), holding the tickets its previous connection received.
pub fn with_resumption(base: &ClientConfig, resumption: bool) -> Arc<ClientConfig> {
    let mut config = base.clone();
    config.resumption = if resumption {
        Resumption::in_memory_sessions(SESSION_CACHE_ENTRIES)
    } else {
        Resumption::disabled()
    };
    Arc::new(config)
}

pub fn server_name(sni: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(sni.to_owned()).map_err(|e| format!("--sni {sni:?}: {e}"))
}

fn pem_error(path: &Path, e: &rustls::pki_types::pem::Error) -> String {
    format!("{}: {e:?}", path.display())
}

/// `--insecure`: any server certificate, as `curl -k` (signatures are still checked, so the
/// handshake costs the client what a verifying client pays, minus the chain walk).
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

//! Parsing and checking the PEM that Secrets and ConfigMaps carry. Used by `translate` (so that a
//! bad reference shows in status) and by `compile` (so that nothing unchecked reaches a shard).

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::desired::{CaCertificate, PrivateKey, PrivateKeyEncoding, ServerCertificate};

/// Why a `kubernetes.io/tls` Secret's `tls.crt` / `tls.key` cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServerCertificateError {
    #[error("tls.crt is not valid PEM: {0}")]
    CertificatePem(String),
    #[error("tls.crt holds no CERTIFICATE block")]
    NoCertificate,
    #[error("tls.crt certificate {index} is not a valid X.509 certificate: {reason}")]
    CertificateDer { index: usize, reason: String },
    #[error("tls.key is not valid PEM: {0}")]
    KeyPem(String),
    #[error(
        "tls.key holds no private key (expected RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey,
    #[error("tls.key holds more than one private key")]
    SeveralKeys,
    #[error("tls.key is not a usable private key: {0}")]
    UnusableKey(String),
    #[error("tls.key does not match the public key of the tls.crt leaf certificate")]
    KeyMismatch,
}

/// Why a CA bundle (`ca.crt`) cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CaBundleError {
    #[error("ca.crt is not valid PEM: {0}")]
    Pem(String),
    #[error("ca.crt holds no CERTIFICATE block")]
    NoCertificate,
    #[error("ca.crt certificate {index} cannot be used as a trust anchor: {reason}")]
    NotATrustAnchor { index: usize, reason: String },
}

/// Parses a server certificate chain and key and checks that they belong together.
pub fn parse_server_certificate(
    cert_pem: &[u8],
    key_pem: &[u8],
    source: &str,
) -> Result<ServerCertificate, ServerCertificateError> {
    let chain = parse_certificates(cert_pem).map_err(|e| match e {
        PemCertsError::Pem(m) => ServerCertificateError::CertificatePem(m),
        PemCertsError::Empty => ServerCertificateError::NoCertificate,
    })?;
    for (index, der) in chain.iter().enumerate() {
        webpki::EndEntityCert::try_from(&CertificateDer::from(der.as_slice())).map_err(|e| {
            ServerCertificateError::CertificateDer {
                index,
                reason: format!("{e:?}"),
            }
        })?;
    }
    let key = parse_private_key(key_pem)?;
    certified_key(&chain, &key)?;
    Ok(ServerCertificate {
        chain_der: chain,
        key,
        source: source.to_owned(),
    })
}

/// Builds the rustls signing key for a checked certificate (also used by `compile`).
pub fn certified_key(
    chain_der: &[Vec<u8>],
    key: &PrivateKey,
) -> Result<CertifiedKey, ServerCertificateError> {
    let chain: Vec<CertificateDer<'static>> = chain_der
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let key_der = match key.encoding {
        PrivateKeyEncoding::Pkcs1 => PrivateKeyDer::Pkcs1(key.der.clone().into()),
        PrivateKeyEncoding::Pkcs8 => PrivateKeyDer::Pkcs8(key.der.clone().into()),
        PrivateKeyEncoding::Sec1 => PrivateKeyDer::Sec1(key.der.clone().into()),
    };
    let provider = aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ServerCertificateError::KeyMismatch,
        other => ServerCertificateError::UnusableKey(other.to_string()),
    })
}

fn parse_private_key(key_pem: &[u8]) -> Result<PrivateKey, ServerCertificateError> {
    let mut found = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(key_pem) {
        let (kind, der) = section.map_err(|e| ServerCertificateError::KeyPem(pem_message(&e)))?;
        let encoding = match kind {
            SectionKind::RsaPrivateKey => PrivateKeyEncoding::Pkcs1,
            SectionKind::PrivateKey => PrivateKeyEncoding::Pkcs8,
            SectionKind::EcPrivateKey => PrivateKeyEncoding::Sec1,
            _ => continue,
        };
        if found.is_some() {
            return Err(ServerCertificateError::SeveralKeys);
        }
        found = Some(PrivateKey { encoding, der });
    }
    found.ok_or(ServerCertificateError::NoKey)
}

/// Parses a CA bundle: one or more PEM certificates, each usable as a trust anchor.
pub fn parse_ca_bundle(pem: &[u8], source: &str) -> Result<Vec<CaCertificate>, CaBundleError> {
    let ders = parse_certificates(pem).map_err(|e| match e {
        PemCertsError::Pem(m) => CaBundleError::Pem(m),
        PemCertsError::Empty => CaBundleError::NoCertificate,
    })?;
    let mut anchors = Vec::with_capacity(ders.len());
    for (index, der) in ders.into_iter().enumerate() {
        webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice())).map_err(|e| {
            CaBundleError::NotATrustAnchor {
                index,
                reason: format!("{e:?}"),
            }
        })?;
        anchors.push(CaCertificate {
            der,
            source: source.to_owned(),
        });
    }
    Ok(anchors)
}

enum PemCertsError {
    Pem(String),
    Empty,
}

/// Every CERTIFICATE block, in order; other block types are skipped.
fn parse_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, PemCertsError> {
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| PemCertsError::Pem(pem_message(&e)))?;
        if kind == SectionKind::Certificate {
            certs.push(der);
        }
    }
    if certs.is_empty() {
        return Err(PemCertsError::Empty);
    }
    Ok(certs)
}

/// PEM errors may quote the offending line; never echo key material into status or logs.
fn pem_message(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a section is not valid base64".to_owned(),
        pem::Error::SectionTooLarge => "a section is too large".to_owned(),
        other => other.to_string(),
    }
}

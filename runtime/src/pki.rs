//! Certificates for the demo, the tests and the benchmarks, shaped like the user guide's
//! `openssl` commands: a CA `CN=Test CA, O=Test Org`, a server certificate for `example.com`
//! and `*.example.com`, a client certificate `CN=client.example.com`, all valid for a year.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SanType,
};
use time::{Duration, OffsetDateTime};

/// Validity of generated certificates, as the guide's `-days 365`.
const VALIDITY: Duration = Duration::days(365);

/// The key type of generated certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA-2048, as the guide's `openssl genrsa 2048`.
    Rsa2048,
    EcdsaP256,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertKeyPem {
    pub cert: String,
    pub key: String,
}

/// A certificate authority that can issue more certificates.
#[derive(Debug)]
pub struct Authority {
    pub pem: CertKeyPem,
    issuer: Issuer<'static, KeyPair>,
    kind: KeyKind,
}

/// The guide's three certificates.
#[derive(Debug)]
pub struct GuidePki {
    pub ca: Authority,
    pub server: CertKeyPem,
    pub client: CertKeyPem,
}

fn key_pair(kind: KeyKind) -> Result<KeyPair, rcgen::Error> {
    match kind {
        KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyKind::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Test Org");
    dn
}

fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + VALIDITY;
}

impl Authority {
    /// A self-signed CA with the given common name.
    pub fn new(common_name: &str, kind: KeyKind) -> Result<Self, rcgen::Error> {
        Self::new_with(common_name, kind, |_| {})
    }

    /// Like [`new`](Self::new), with a hook to adjust the parameters (a fixed serial number,
    /// say, to make two CAs that differ only by their keys).
    pub fn new_with(
        common_name: &str,
        kind: KeyKind,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<Self, rcgen::Error> {
        let key = key_pair(kind)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        adjust(&mut params);
        let cert = params.self_signed(&key)?;
        let pem = CertKeyPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Self {
            pem,
            issuer: Issuer::new(params, key),
            kind,
        })
    }

    /// A leaf signed by this CA. `sans` entries starting with `URI:` become URI SANs, others
    /// DNS names.
    pub fn issue(&self, common_name: &str, sans: &[&str]) -> Result<CertKeyPem, rcgen::Error> {
        self.issue_with(common_name, sans, |_| {})
    }

    /// Like [`issue`](Self::issue), with a hook to adjust the parameters (validity, EKU).
    pub fn issue_with(
        &self,
        common_name: &str,
        sans: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<CertKeyPem, rcgen::Error> {
        self.issue_for(self.kind, common_name, sans, adjust)
    }

    /// Like [`issue_with`](Self::issue_with), for a key of another type than the CA's.
    pub fn issue_for(
        &self,
        key_kind: KeyKind,
        common_name: &str,
        sans: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<CertKeyPem, rcgen::Error> {
        let key = key_pair(key_kind)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        for san in sans {
            params
                .subject_alt_names
                .push(match san.strip_prefix("URI:") {
                    Some(uri) => SanType::URI(uri.try_into()?),
                    None => SanType::DnsName((*san).try_into()?),
                });
        }
        validity(&mut params);
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKeyPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

impl GuidePki {
    /// The user guide's CA, server and client certificates.
    pub fn generate(kind: KeyKind) -> Result<Self, rcgen::Error> {
        Self::generate_with_client_key(kind, kind)
    }

    /// Like [`generate`](Self::generate), with a client key of `client_kind` (the CA still
    /// signs it): what `loadtest/compare` uses by default, an RSA-2048 CA and server and a
    /// P-256 client.
    pub fn generate_with_client_key(
        kind: KeyKind,
        client_kind: KeyKind,
    ) -> Result<Self, rcgen::Error> {
        let ca = Authority::new("Test CA", kind)?;
        let server = ca.issue("example.com", &["example.com", "*.example.com"])?;
        let client = ca.issue_for(
            client_kind,
            "client.example.com",
            &["example.com", "*.example.com"],
            |_| {},
        )?;
        Ok(Self { ca, server, client })
    }
}

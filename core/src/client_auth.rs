//! Client-certificate policy of one HTTPS listener (spec §3, §4, §7): the rustls verifier the
//! handshake runs, and the check after it that says who the client is.
//!
//! - `AllowValidOnly`: rustls runs the full check (chain to the port's CAs, validity, EKU, then
//!   the listener's SAN/hash rules) inside the handshake, so a rejected client only ever sees
//!   a TLS alert.
//! - `AllowInsecureFallback`: the handshake asks for a certificate but accepts none or any (the
//!   client's CertificateVerify signature is still checked: a client must own the key it
//!   presents). The same check then runs once after the handshake and only decides whether
//!   the connection carries a verified identity; a failure is tolerated, never forwarded.
//! - A resumed session restores the client chain from the ticket; it is checked again against
//!   the listener's current policy (dates included), so resumption never skips a check.
//! - X.509 v1 certificates (no extensions; webpki parses v3 only): refused by
//!   `AllowValidOnly` as [`ClientCertFailure::NotVersion3`]; under `AllowInsecureFallback` the
//!   client's signature is checked against the key read with x509-parser and the connection is
//!   served unverified (docs/architecture.md says why).
//! - Fail closed: with no valid CA, every client is refused in the handshake.
//! - A chain that passed the chain check on this shard is not checked again under the same
//!   policy while its certificates are in date ([`verified_chains`]); the SAN/hash rules and
//!   the client's signature are checked on every handshake.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{RootCertStore, SignatureScheme};

use crate::client_identity::{self, IdentityMismatch, VerifiedClient};
use crate::desired::{ClientValidation, ValidationMode};
use crate::listener_options::CertificateHash;
use crate::listener_options::{ClientIdentityRules, ForwardClientCert};
use crate::verified_chains::{self, PolicyId};

/// What the handshake and the post-handshake check concluded about the client.
#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// No certificate was requested.
    Anonymous,
    /// The certificate chained to a configured CA and passed the listener's rules.
    Verified(Arc<VerifiedClient>),
    /// Fallback mode: no certificate, or one that did not verify; the connection is served,
    /// unverified.
    Unverified(ClientCertFailure),
    /// A resumed session whose certificate no longer passes: close the connection.
    Rejected(ClientCertFailure),
}

/// Why a client certificate did not pass, for logs and metrics (never for the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertFailure {
    Missing,
    /// An X.509 v1 (or v2) certificate: no extensions, so nothing says it may identify a
    /// client, and webpki verifies v3 only.
    NotVersion3,
    Invalid(String),
    SanMismatch,
    HashMismatch,
}

impl fmt::Display for ClientCertFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCertFailure::Missing => f.write_str("no client certificate"),
            ClientCertFailure::NotVersion3 => f.write_str(
                "client certificate is X.509 v1, not v3 (issue it with extensions, e.g. openssl x509 -req -extfile)",
            ),
            ClientCertFailure::Invalid(why) => write!(f, "invalid client certificate: {why}"),
            ClientCertFailure::SanMismatch => {
                f.write_str("client certificate carries none of the allowed subject alt names")
            }
            ClientCertFailure::HashMismatch => {
                f.write_str("client certificate hash is not one of the allowed hashes")
            }
        }
    }
}

/// A client certificate the handshake refused, for the log line that says who was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedCertificate {
    pub subject: String,
    pub sha256: CertificateHash,
}

thread_local! {
    /// The certificate of the last handshake this thread's verifier refused. rustls gives a
    /// verifier no per-connection state; a shard runs one handshake step at a time, so the
    /// connection whose `process_new_packets` just failed reads it right away
    /// ([`take_rejected_certificate`]). Only the failure path pays for it.
    static LAST_REJECTED: RefCell<Option<RejectedCertificate>> = const { RefCell::new(None) };
}

/// The certificate the verifier refused during the last failed handshake step on this thread.
pub fn take_rejected_certificate() -> Option<RejectedCertificate> {
    LAST_REJECTED.with(|last| last.borrow_mut().take())
}

fn record_rejection(end_entity: &CertificateDer<'_>) {
    let rejected = RejectedCertificate {
        subject: client_identity::subject_of(end_entity).unwrap_or_default(),
        sha256: client_identity::sha256(end_entity),
    };
    LAST_REJECTED.with(|last| *last.borrow_mut() = Some(rejected));
}

/// The client policy of one listener.
#[derive(Debug)]
pub struct ClientAuth {
    validation: Validation,
    forward: ForwardClientCert,
    /// What [`verified_chains`] remembers verdicts under: unique to this compiled policy.
    policy_id: PolicyId,
}

enum Validation {
    NotRequested,
    Verify {
        mode: ValidationMode,
        webpki: Arc<dyn ClientCertVerifier>,
        rules: ClientIdentityRules,
    },
    RefuseAll,
}

impl fmt::Debug for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Validation::NotRequested => f.write_str("NotRequested"),
            Validation::Verify { mode, rules, .. } => f
                .debug_struct("Verify")
                .field("mode", mode)
                .field("rules", rules)
                .finish_non_exhaustive(),
            Validation::RefuseAll => f.write_str("RefuseAll"),
        }
    }
}

/// The trust anchors could not be turned into a verifier (they were checked by translate, so
/// this means a certificate rustls accepts as DER but not as an anchor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot build the client verifier: {0}")]
pub struct ClientAuthError(String);

impl ClientAuth {
    pub fn new(
        validation: &ClientValidation,
        rules: &ClientIdentityRules,
        forward: ForwardClientCert,
    ) -> Result<Self, ClientAuthError> {
        let validation = match validation {
            ClientValidation::NotRequested => Validation::NotRequested,
            ClientValidation::RefuseAll { .. } => Validation::RefuseAll,
            ClientValidation::Verify {
                mode,
                trust_anchors,
            } => {
                let mut roots = RootCertStore::empty();
                for ca in trust_anchors {
                    roots
                        .add(CertificateDer::from(ca.der.as_slice()).into_owned())
                        .map_err(|e| ClientAuthError(format!("{}: {e}", ca.source)))?;
                }
                // No revocation lists: `verified_chains` relies on that (a verdict can only
                // change with the dates it re-checks). Adding CRLs means dropping its entries
                // whenever a list changes.
                let webpki = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::new(aws_lc_rs::default_provider()),
                )
                .build()
                .map_err(|e| ClientAuthError(e.to_string()))?;
                Validation::Verify {
                    mode: *mode,
                    webpki,
                    rules: rules.clone(),
                }
            }
        };
        Ok(Self {
            validation,
            forward,
            policy_id: PolicyId::fresh(),
        })
    }

    /// The verifier for this listener's rustls `ServerConfig`.
    pub fn rustls_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(HandshakeVerifier {
            policy: Arc::clone(self),
            algorithms: aws_lc_rs::default_provider().signature_verification_algorithms,
        })
    }

    /// Whether this listener refuses every client (all CA references invalid).
    pub fn refuses_all(&self) -> bool {
        matches!(self.validation, Validation::RefuseAll)
    }

    /// Decides who the client is once the handshake completed. `peer` is the chain rustls
    /// saw (or restored from the ticket when `resumed`).
    pub fn identify(
        &self,
        peer: Option<&[CertificateDer<'static>]>,
        resumed: bool,
    ) -> PeerIdentity {
        let Validation::Verify {
            mode,
            webpki,
            rules,
        } = &self.validation
        else {
            return match self.validation {
                Validation::RefuseAll => PeerIdentity::Rejected(ClientCertFailure::Missing),
                _ => PeerIdentity::Anonymous,
            };
        };
        let Some((leaf, intermediates)) = peer.and_then(<[_]>::split_first) else {
            return match mode {
                ValidationMode::AllowValidOnly => {
                    PeerIdentity::Rejected(ClientCertFailure::Missing)
                }
                ValidationMode::AllowInsecureFallback => {
                    PeerIdentity::Unverified(ClientCertFailure::Missing)
                }
            };
        };
        let verified = if *mode == ValidationMode::AllowValidOnly && !resumed {
            // rustls ran exactly this check in the handshake.
            Ok(())
        } else {
            self.full_check(webpki.as_ref(), rules, leaf, intermediates)
        };
        match (verified, mode) {
            (Ok(()), _) => PeerIdentity::Verified(verified_chains::identity_of(
                self.policy_id,
                leaf,
                intermediates,
                || VerifiedClient::new(leaf, intermediates, self.forward),
            )),
            (Err(failure), ValidationMode::AllowInsecureFallback) => {
                PeerIdentity::Unverified(failure)
            }
            (Err(failure), ValidationMode::AllowValidOnly) => PeerIdentity::Rejected(failure),
        }
    }

    /// The chain check (a path to one of the CAs, dates, key usage), unless this thread saw
    /// the same chain pass it under this policy and it is still in date.
    fn check_chain(
        &self,
        webpki: &dyn ClientCertVerifier,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        verified_chains::check_once(self.policy_id, leaf, intermediates, now, || {
            webpki
                .verify_client_cert(leaf, intermediates, now)
                .map(|_| ())
        })
    }

    /// Chain verification, then the listener's SAN and hash rules.
    fn full_check(
        &self,
        webpki: &dyn ClientCertVerifier,
        rules: &ClientIdentityRules,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), ClientCertFailure> {
        self.check_chain(webpki, leaf, intermediates, UnixTime::now())
            .map_err(|e| classify_error(&e).unwrap_or(ClientCertFailure::Invalid(e.to_string())))?;
        client_identity::check_rules(rules, leaf).map_err(|m| match m {
            IdentityMismatch::SubjectAltName => ClientCertFailure::SanMismatch,
            IdentityMismatch::Hash => ClientCertFailure::HashMismatch,
            IdentityMismatch::Unparsable => {
                ClientCertFailure::Invalid("the leaf certificate cannot be parsed".to_owned())
            }
        })
    }
}

/// Maps a failed handshake to the client-certificate reason, when that was the cause.
pub fn classify_error(err: &rustls::Error) -> Option<ClientCertFailure> {
    match err {
        rustls::Error::NoCertificatesPresented => Some(ClientCertFailure::Missing),
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            if let Some(webpki::Error::UnsupportedCertVersion) =
                other.0.downcast_ref::<webpki::Error>()
            {
                return Some(ClientCertFailure::NotVersion3);
            }
            match other.0.downcast_ref::<IdentityMismatch>() {
                Some(IdentityMismatch::SubjectAltName) => Some(ClientCertFailure::SanMismatch),
                Some(IdentityMismatch::Hash) => Some(ClientCertFailure::HashMismatch),
                _ => Some(ClientCertFailure::Invalid(err.to_string())),
            }
        }
        rustls::Error::InvalidCertificate(e) => Some(ClientCertFailure::Invalid(format!("{e:?}"))),
        _ => None,
    }
}

/// The `ClientCertVerifier` handed to rustls.
struct HandshakeVerifier {
    policy: Arc<ClientAuth>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for HandshakeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeVerifier")
            .field("policy", &self.policy)
            .finish()
    }
}

impl HandshakeVerifier {
    /// The public key of a certificate that webpki could not parse (`error`), under
    /// `AllowInsecureFallback` only: fallback serves clients whose certificate does not
    /// verify, so it must not refuse one for its format (an X.509 v1 certificate, as
    /// `openssl x509 -req` makes without `-extfile`), yet the client must still prove it holds
    /// the key it presents. Any other policy, or a certificate with no readable key, keeps
    /// `error`.
    fn key_of_unparsable_certificate(
        &self,
        cert: &CertificateDer<'_>,
        error: rustls::Error,
    ) -> Result<SubjectPublicKeyInfoDer<'static>, rustls::Error> {
        let fallback = matches!(
            self.policy.validation,
            Validation::Verify {
                mode: ValidationMode::AllowInsecureFallback,
                ..
            }
        );
        if !fallback || webpki::EndEntityCert::try_from(cert).is_ok() {
            return Err(error);
        }
        match x509_parser::parse_x509_certificate(cert) {
            Ok((_, parsed)) => Ok(SubjectPublicKeyInfoDer::from(
                parsed.tbs_certificate.subject_pki.raw.to_vec(),
            )),
            Err(_) => Err(error),
        }
    }
}

/// rustls' TLS 1.2 signature check, for a bare public key (it has one for TLS 1.3 only): the
/// first of the scheme's algorithms that fits the key decides.
fn verify_tls12_signature_with_raw_key(
    message: &[u8],
    spki: &SubjectPublicKeyInfoDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let bad_signature = || rustls::Error::InvalidCertificate(CertificateError::BadSignature);
    let key = webpki::RawPublicKeyEntity::try_from(spki).map_err(|_| bad_signature())?;
    let candidates = algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, algs)| *algs)
        .ok_or(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ))?;
    for alg in candidates {
        match key.verify_signature(*alg, message, dss.signature()) {
            Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
            Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => continue,
            Err(_) => return Err(bad_signature()),
        }
    }
    Err(bad_signature())
}

impl ClientCertVerifier for HandshakeVerifier {
    fn offer_client_auth(&self) -> bool {
        !matches!(self.policy.validation, Validation::NotRequested)
    }

    fn client_auth_mandatory(&self) -> bool {
        match &self.policy.validation {
            Validation::NotRequested => false,
            Validation::RefuseAll => true,
            Validation::Verify { mode, .. } => *mode == ValidationMode::AllowValidOnly,
        }
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.policy.validation {
            Validation::Verify { webpki, .. } => webpki.root_hint_subjects(),
            Validation::NotRequested | Validation::RefuseAll => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.policy.validation {
            Validation::Verify {
                mode: ValidationMode::AllowValidOnly,
                webpki,
                rules,
            } => {
                let verified = self
                    .policy
                    .check_chain(webpki.as_ref(), end_entity, intermediates, now)
                    .and_then(|()| {
                        client_identity::check_rules(rules, end_entity).map_err(|m| {
                            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                                Arc::new(m),
                            )))
                        })
                    });
                if verified.is_err() {
                    record_rejection(end_entity);
                }
                verified.map(|()| ClientCertVerified::assertion())
            }
            // Checked after the handshake; see the module comment.
            Validation::Verify {
                mode: ValidationMode::AllowInsecureFallback,
                ..
            } => Ok(ClientCertVerified::assertion()),
            Validation::NotRequested | Validation::RefuseAll => {
                record_rejection(end_entity);
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms).or_else(
            |error| {
                let spki = self.key_of_unparsable_certificate(cert, error)?;
                verify_tls12_signature_with_raw_key(message, &spki, dss, &self.algorithms)
            },
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms).or_else(
            |error| {
                let spki = self.key_of_unparsable_certificate(cert, error)?;
                rustls::crypto::verify_tls13_signature_with_raw_key(
                    message,
                    &spki,
                    dss,
                    &self.algorithms,
                )
            },
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

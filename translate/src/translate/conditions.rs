//! Condition types and reasons of the Gateway API status schema, and the builder that stamps
//! every condition with `observedGeneration` and `lastTransitionTime`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";
    /// Gateway condition set while any frontend validation mode is `AllowInsecureFallback`.
    pub const INSECURE_FRONTEND_VALIDATION_MODE: &str = "InsecureFrontendValidationMode";
}

/// Condition reasons.
pub mod reasons {
    // Shared by several condition types.
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const INVALID: &str = "Invalid";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";

    // Gateway.
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    /// `Accepted=False`: `spec.infrastructure.parametersRef` names something Portcullis does
    /// not take.
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const CONFIGURATION_CHANGED: &str = "ConfigurationChanged";

    // Listener.
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    /// `Programmed=False`: the data plane has the listener but does not listen on its port yet
    /// (it tries again every second).
    pub const PENDING: &str = "Pending";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    /// Also a route parent's `Accepted=False` reason: an HTTPRoute and a GRPCRoute that share
    /// a hostname on a listener (the younger is refused).
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";

    // GatewayClass.
    pub const GATEWAY_CLASS_ACCEPTED: &str = "Accepted";

    // HTTPRoute parent.
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
}

/// Why something is not as asked: a condition reason and a message naming the offending
/// reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Joins the messages of several problems into one condition message.
pub(crate) fn join_messages(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Builds the conditions of one object: every condition carries the object's generation and
/// the same transition time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConditionStamp<'a> {
    pub observed_generation: i64,
    pub now: &'a Time,
}

impl ConditionStamp<'_> {
    pub fn condition(
        &self,
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: Some(self.observed_generation),
            last_transition_time: self.now.clone(),
        }
    }

    /// `True` with `ok_reason` when there are no problems, else `False` with the first
    /// problem's reason and every problem's message.
    pub fn summarize(
        &self,
        type_: &str,
        problems: &[Problem],
        ok_reason: &str,
        ok_message: &str,
    ) -> Condition {
        match problems.first() {
            None => self.condition(type_, true, ok_reason, ok_message),
            Some(first) => self.condition(type_, false, first.reason, join_messages(problems)),
        }
    }
}

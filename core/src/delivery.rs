//! The resolved config of one Gateway as the controller delivers it to that Gateway's data
//! plane: two byte strings, each stored in one Secret that only that data plane may read.
//!
//! - **config**: ports, listeners with their certificates, keys and CA bundles, and routes.
//!   Backends name their endpoint set instead of listing it.
//! - **endpoints**: the ready endpoints of every backend the config names, by backend name.
//!
//! Two objects because they change at different rates: a Service scaling up or down rewrites
//! only the endpoints object, never the certificates and routes; a certificate rotation never
//! rewrites the endpoints. The two are written separately, so the data plane may see a new
//! config before the endpoints it needs (or the reverse): [`decode`] then refuses the pair
//! ([`DeliveryError::EndpointsBehind`]) and the data plane keeps serving what it has until the
//! other object arrives. The controller writes the endpoints first, so the window is one
//! watch event.
//!
//! The format is JSON (readable with `kubectl get secret -o jsonpath`, and what serde already
//! gives the config types), versioned by [`FORMAT_VERSION`]: a data plane refuses a version it
//! does not know rather than guess. Certificates and keys are base64 DER. Decoding untrusted
//! bytes never panics; what it cannot read is an error that names the object.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::desired::{
    BackendTarget, CaCertificate, ClientValidation, DesiredConfig, DesiredListener, DesiredPort,
    DesiredRoute, ListenerTls, ObjectRef, PortProtocol, PrivateKey, PrivateKeyEncoding,
    ServerCertificate, ValidationMode,
};
use crate::listener_options::ListenerTlsOptions;

/// The version of both objects' format. A change that an older data plane would misread
/// bumps it. 2: rules carry filters (header changes, redirects), which a data plane of
/// version 1 would ignore.
pub const FORMAT_VERSION: u32 = 2;

/// The Secret data key of the config object.
pub const CONFIG_KEY: &str = "config.json";
/// The Secret data key of the endpoints object.
pub const ENDPOINTS_KEY: &str = "endpoints.json";

/// The most bytes one object's data may hold: the API server refuses a Secret whose data
/// exceeds 1 MiB.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;

/// One Gateway's config, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub config: Vec<u8>,
    pub endpoints: Vec<u8>,
}

/// Which of the two objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveredObject {
    Config,
    Endpoints,
}

impl DeliveredObject {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveredObject::Config => "config",
            DeliveredObject::Endpoints => "endpoints",
        }
    }
}

impl std::fmt::Display for DeliveredObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivered pair cannot be served. All but [`DeliveryError::EndpointsBehind`] are the
/// writer's fault (or a version skew between controller and data plane); that one is a
/// moment between two writes.
#[derive(Debug, Error)]
pub enum DeliveryError {
    #[error("the {object} object is not valid: {source}")]
    Malformed {
        object: DeliveredObject,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the {object} object has format version {found}; this data plane reads version {FORMAT_VERSION} (run the controller and the data plane of one release)"
    )]
    Version { object: DeliveredObject, found: u32 },
    #[error(
        "the config names backend {backend}, which the endpoints object does not have yet (it is written separately)"
    )]
    EndpointsBehind { backend: String },
    #[error(
        "the {object} object is {size} bytes, more than the {MAX_OBJECT_BYTES} an object may hold"
    )]
    TooLarge {
        object: DeliveredObject,
        size: usize,
    },
}

/// Encodes `desired` as the two objects. Fails only when one would be too large to store.
pub fn encode(desired: &DesiredConfig) -> Result<Delivered, DeliveryError> {
    let mut backends: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let ports = desired
        .ports
        .iter()
        .map(|port| WirePort::from_desired(port, &mut backends))
        .collect();
    let config = to_json(&WireConfig {
        version: FORMAT_VERSION,
        ports,
    });
    let endpoints = to_json(&WireEndpoints {
        version: FORMAT_VERSION,
        backends,
    });
    for (object, bytes) in [
        (DeliveredObject::Config, &config),
        (DeliveredObject::Endpoints, &endpoints),
    ] {
        if bytes.len() > MAX_OBJECT_BYTES {
            return Err(DeliveryError::TooLarge {
                object,
                size: bytes.len(),
            });
        }
    }
    Ok(Delivered { config, endpoints })
}

/// Decodes a delivered pair into the desired config it was made from.
pub fn decode(config: &[u8], endpoints: &[u8]) -> Result<DesiredConfig, DeliveryError> {
    let config: WireConfig = from_json(DeliveredObject::Config, config)?;
    let endpoints: WireEndpoints = from_json(DeliveredObject::Endpoints, endpoints)?;
    let backends = endpoints.backends;
    let ports = config
        .ports
        .into_iter()
        .map(|port| port.into_desired(&backends))
        .collect::<Result<_, _>>()?;
    Ok(DesiredConfig { ports })
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Serializing these plain structs (string keys, no non-finite floats) cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Only the version first, so that a newer format is reported as such rather than as
/// whatever field it no longer has.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

fn from_json<T: for<'de> Deserialize<'de>>(
    object: DeliveredObject,
    bytes: &[u8],
) -> Result<T, DeliveryError> {
    let malformed = |source| DeliveryError::Malformed { object, source };
    let VersionOnly { version } = serde_json::from_slice(bytes).map_err(malformed)?;
    if version != FORMAT_VERSION {
        return Err(DeliveryError::Version {
            object,
            found: version,
        });
    }
    serde_json::from_slice(bytes).map_err(malformed)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireConfig {
    version: u32,
    ports: Vec<WirePort>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEndpoints {
    version: u32,
    /// Backend name (`namespace/service:port`) -> ready endpoints.
    backends: BTreeMap<String, Vec<SocketAddr>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePort {
    port: u16,
    protocol: PortProtocol,
    gateway: ObjectRef,
    client_validation: WireClientValidation,
    listeners: Vec<WireListener>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
enum WireClientValidation {
    NotRequested,
    Verify {
        mode: ValidationMode,
        trust_anchors: Vec<WireCaCertificate>,
    },
    RefuseAll {
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCaCertificate {
    der: Base64,
    source: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireListener {
    name: String,
    hostname: Option<String>,
    tls: Option<WireListenerTls>,
    /// Endpoint targets are written empty: their endpoints are in the endpoints object.
    routes: Vec<DesiredRoute>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireListenerTls {
    chain_der: Vec<Base64>,
    key_encoding: PrivateKeyEncoding,
    key_der: Base64,
    source: String,
    options: ListenerTlsOptions,
}

/// DER as base64 text.
struct Base64(Vec<u8>);

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Base64)
            .map_err(serde::de::Error::custom)
    }
}

impl WirePort {
    fn from_desired(port: &DesiredPort, backends: &mut BTreeMap<String, Vec<SocketAddr>>) -> Self {
        let client_validation = match &port.client_validation {
            ClientValidation::NotRequested => WireClientValidation::NotRequested,
            ClientValidation::Verify {
                mode,
                trust_anchors,
            } => WireClientValidation::Verify {
                mode: *mode,
                trust_anchors: trust_anchors
                    .iter()
                    .map(|ca| WireCaCertificate {
                        der: Base64(ca.der.clone()),
                        source: ca.source.clone(),
                    })
                    .collect(),
            },
            ClientValidation::RefuseAll { reason } => WireClientValidation::RefuseAll {
                reason: reason.clone(),
            },
        };
        let listeners = port
            .listeners
            .iter()
            .map(|listener| WireListener {
                name: listener.name.clone(),
                hostname: listener.hostname.clone(),
                tls: listener.tls.as_ref().map(|tls| WireListenerTls {
                    chain_der: tls
                        .certificate
                        .chain_der
                        .iter()
                        .map(|der| Base64(der.clone()))
                        .collect(),
                    key_encoding: tls.certificate.key.encoding,
                    key_der: Base64(tls.certificate.key.der.clone()),
                    source: tls.certificate.source.clone(),
                    options: tls.options.clone(),
                }),
                routes: listener
                    .routes
                    .iter()
                    .map(|route| move_endpoints_out(route, backends))
                    .collect(),
            })
            .collect();
        WirePort {
            port: port.port,
            protocol: port.protocol,
            gateway: port.gateway.clone(),
            client_validation,
            listeners,
        }
    }

    fn into_desired(
        self,
        backends: &BTreeMap<String, Vec<SocketAddr>>,
    ) -> Result<DesiredPort, DeliveryError> {
        let client_validation = match self.client_validation {
            WireClientValidation::NotRequested => ClientValidation::NotRequested,
            WireClientValidation::Verify {
                mode,
                trust_anchors,
            } => ClientValidation::Verify {
                mode,
                trust_anchors: trust_anchors
                    .into_iter()
                    .map(|ca| CaCertificate {
                        der: ca.der.0,
                        source: ca.source,
                    })
                    .collect(),
            },
            WireClientValidation::RefuseAll { reason } => ClientValidation::RefuseAll { reason },
        };
        let listeners = self
            .listeners
            .into_iter()
            .map(|listener| {
                let routes = listener
                    .routes
                    .into_iter()
                    .map(|route| move_endpoints_in(route, backends))
                    .collect::<Result<_, _>>()?;
                Ok(DesiredListener {
                    name: listener.name,
                    hostname: listener.hostname,
                    tls: listener.tls.map(|tls| ListenerTls {
                        certificate: ServerCertificate {
                            chain_der: tls.chain_der.into_iter().map(|der| der.0).collect(),
                            key: PrivateKey {
                                encoding: tls.key_encoding,
                                der: tls.key_der.0,
                            },
                            source: tls.source,
                        },
                        options: tls.options,
                    }),
                    routes,
                })
            })
            .collect::<Result<_, DeliveryError>>()?;
        Ok(DesiredPort {
            port: self.port,
            protocol: self.protocol,
            gateway: self.gateway,
            client_validation,
            listeners,
        })
    }
}

/// The route with its endpoint lists emptied, the lists recorded by backend name.
fn move_endpoints_out(
    route: &DesiredRoute,
    backends: &mut BTreeMap<String, Vec<SocketAddr>>,
) -> DesiredRoute {
    let mut route = route.clone();
    for backend in route.rules.iter_mut().flat_map(|r| r.backends.iter_mut()) {
        if let BackendTarget::Endpoints(endpoints) = &mut backend.target {
            backends.insert(backend.name.clone(), std::mem::take(endpoints));
        }
    }
    route
}

/// The route with each backend's endpoint list filled from `backends`.
fn move_endpoints_in(
    mut route: DesiredRoute,
    backends: &BTreeMap<String, Vec<SocketAddr>>,
) -> Result<DesiredRoute, DeliveryError> {
    for backend in route.rules.iter_mut().flat_map(|r| r.backends.iter_mut()) {
        if let BackendTarget::Endpoints(endpoints) = &mut backend.target {
            let Some(delivered) = backends.get(&backend.name) else {
                return Err(DeliveryError::EndpointsBehind {
                    backend: backend.name.clone(),
                });
            };
            endpoints.clone_from(delivered);
        }
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{
        BackendProtocol, DesiredBackend, DesiredRule, PathMatch, RouteMatch, ValidationMode,
    };
    use crate::filters::{
        HeaderField, HeaderModifier, RedirectPath, RedirectScheme, RedirectStatus, RequestRedirect,
        RuleFilters,
    };

    fn backend(name: &str, endpoints: &[&str]) -> DesiredBackend {
        DesiredBackend {
            name: name.to_owned(),
            weight: 1,
            protocol: BackendProtocol::Http1,
            target: BackendTarget::Endpoints(
                endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            ),
        }
    }

    /// An HTTPS port with a certificate, a CA bundle and three routes: one with header
    /// filters, one with a backend that did not resolve, one that redirects.
    fn sample(endpoints: &[&str]) -> DesiredConfig {
        let route = |name: &str, filters, backends| DesiredRoute {
            route: ObjectRef::new("apps", name),
            hostnames: vec!["a.example".to_owned()],
            rules: vec![DesiredRule {
                matches: vec![RouteMatch {
                    path: PathMatch::Prefix("/api".to_owned()),
                    ..RouteMatch::default()
                }],
                filters,
                backends,
            }],
        };
        let field = |name: &str, value: &str| HeaderField {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        let headers = RuleFilters {
            request_headers: HeaderModifier {
                set: vec![field("X-Set", "a")],
                add: vec![field("X-Add", "b")],
                remove: vec!["X-Remove".to_owned()],
            },
            response_headers: HeaderModifier {
                set: vec![],
                add: vec![field("X-Served-By", "gw")],
                remove: vec![],
            },
            redirect: None,
        };
        let redirect = RuleFilters {
            redirect: Some(RequestRedirect {
                scheme: Some(RedirectScheme::Https),
                hostname: Some("b.example".to_owned()),
                port: Some(8443),
                path: Some(RedirectPath::ReplacePrefixMatch("/v2".to_owned())),
                status: RedirectStatus::PermanentRedirect,
            }),
            ..RuleFilters::default()
        };
        let invalid = DesiredBackend {
            name: "apps/missing:80".to_owned(),
            weight: 1,
            protocol: BackendProtocol::H2c,
            target: BackendTarget::Invalid {
                reason: "Service apps/missing not found".to_owned(),
            },
        };
        DesiredConfig {
            ports: vec![DesiredPort {
                port: 8443,
                protocol: PortProtocol::Https,
                gateway: ObjectRef::new("edge", "gw"),
                client_validation: ClientValidation::Verify {
                    mode: ValidationMode::AllowValidOnly,
                    trust_anchors: vec![CaCertificate {
                        der: vec![0x30, 0x82, 0, 1, 2],
                        source: "ConfigMap edge/ca".to_owned(),
                    }],
                },
                listeners: vec![DesiredListener {
                    name: "https".to_owned(),
                    hostname: Some("a.example".to_owned()),
                    tls: Some(ListenerTls {
                        certificate: ServerCertificate {
                            chain_der: vec![vec![1, 2, 3], vec![4, 5]],
                            key: PrivateKey {
                                encoding: PrivateKeyEncoding::Pkcs8,
                                der: vec![9, 8, 7],
                            },
                            source: "Secret edge/cert".to_owned(),
                        },
                        options: ListenerTlsOptions::default(),
                    }),
                    routes: vec![
                        route("web", headers, vec![backend("apps/web:80", endpoints)]),
                        route("broken", RuleFilters::default(), vec![invalid]),
                        route("moved", redirect, vec![]),
                    ],
                }],
            }],
        }
    }

    #[test]
    fn a_config_comes_back_as_it_was_encoded_keys_and_all() {
        let desired = sample(&["10.0.0.1:8080", "[fd00::2]:8080"]);
        let delivered = encode(&desired).unwrap();
        assert_eq!(
            decode(&delivered.config, &delivered.endpoints).unwrap(),
            desired
        );
    }

    #[test]
    fn endpoint_changes_leave_the_config_object_unchanged() {
        let before = encode(&sample(&["10.0.0.1:8080"])).unwrap();
        let after = encode(&sample(&["10.0.0.1:8080", "10.0.0.2:8080"])).unwrap();
        assert_eq!(before.config, after.config);
        assert_ne!(before.endpoints, after.endpoints);
        // The old config with the new endpoints is a consistent pair.
        let desired = decode(&before.config, &after.endpoints).unwrap();
        assert_eq!(desired, sample(&["10.0.0.1:8080", "10.0.0.2:8080"]));
    }

    #[test]
    fn a_config_ahead_of_its_endpoints_is_refused_until_they_arrive() {
        let delivered = encode(&sample(&["10.0.0.1:8080"])).unwrap();
        let empty = encode(&DesiredConfig::default()).unwrap();
        let err = decode(&delivered.config, &empty.endpoints).unwrap_err();
        assert!(
            matches!(&err, DeliveryError::EndpointsBehind { backend } if backend == "apps/web:80"),
            "{err}"
        );
    }

    #[test]
    fn another_format_version_is_named_as_such() {
        let delivered = encode(&sample(&[])).unwrap();
        let newer = String::from_utf8(delivered.config).unwrap().replacen(
            "\"version\":2",
            "\"version\":3",
            1,
        );
        let err = decode(newer.as_bytes(), &delivered.endpoints).unwrap_err();
        assert!(
            matches!(
                err,
                DeliveryError::Version {
                    object: DeliveredObject::Config,
                    found: 3
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn malformed_objects_are_errors_that_name_the_object() {
        let delivered = encode(&sample(&[])).unwrap();
        let cases: [(&[u8], &[u8], DeliveredObject); 4] = [
            (b"", &delivered.endpoints, DeliveredObject::Config),
            (
                b"{\"version\":2}",
                &delivered.endpoints,
                DeliveredObject::Config,
            ),
            (&delivered.config, b"[1,2]", DeliveredObject::Endpoints),
            (
                &delivered.config,
                b"{\"version\":2,\"backends\":{\"apps/web:80\":[\"not an address\"]}}",
                DeliveredObject::Endpoints,
            ),
        ];
        for (config, endpoints, expected) in cases {
            match decode(config, endpoints) {
                Err(DeliveryError::Malformed { object, .. }) => assert_eq!(object, expected),
                other => panic!("{other:?}"),
            }
        }
        let bad_base64 = String::from_utf8(delivered.config.clone())
            .unwrap()
            .replacen("\"key_der\":\"", "\"key_der\":\"!", 1);
        assert!(matches!(
            decode(bad_base64.as_bytes(), &delivered.endpoints),
            Err(DeliveryError::Malformed {
                object: DeliveredObject::Config,
                ..
            })
        ));
    }

    #[test]
    fn an_object_over_the_size_limit_is_not_encoded() {
        let many: Vec<String> = (0..70_000)
            .map(|i| format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = encode(&sample(&many)).unwrap_err();
        assert!(
            matches!(
                err,
                DeliveryError::TooLarge {
                    object: DeliveredObject::Endpoints,
                    size
                } if size > MAX_OBJECT_BYTES
            ),
            "{err}"
        );
    }
}

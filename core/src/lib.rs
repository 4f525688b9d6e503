//! Pure, synchronous building blocks of Portcullis: the desired-config types, certificate
//! parsing, hostname semantics, listener options. No sockets, no async, no Kubernetes types.

pub mod certs;
pub mod client_auth;
pub mod client_hello;
pub mod client_identity;
pub mod compile;
pub mod delivery;
pub mod desired;
pub mod filters;
pub mod hostname;
pub mod http1;
pub mod listener_options;
pub mod routing;
pub mod sni;
pub mod suites;
pub mod tickets;
pub mod verified_chains;

//! Pure, synchronous building blocks of Portcullis: the desired-config types, certificate
//! parsing, hostname semantics, listener options. No sockets, no async, no Kubernetes types.

pub mod certs;
pub mod desired;
pub mod hostname;
pub mod listener_options;

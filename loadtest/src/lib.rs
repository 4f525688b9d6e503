//! What `portcullis-load` and `portcullis-soak` share: the rustls client configuration, and the
//! soak itself (a library module so that its report logic is unit-tested); and the pure parts of
//! `delivery-bench` (addresses, markers, percentiles).

pub mod client_config;
pub mod delivery;
pub mod soak;

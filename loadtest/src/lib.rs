//! What `portcullis-load` and `portcullis-soak` share: the rustls client configuration, and the
//! soak itself (a library module so that its report logic is unit-tested).

pub mod client_config;
pub mod soak;

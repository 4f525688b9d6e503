//! The Portcullis data plane: per-core monoio shards that terminate mTLS per port and forward
//! HTTP/1.1, HTTP/2, gRPC and WebSocket. It takes a [`portcullis_core::desired::DesiredConfig`]
//! from any [`serve::ConfigSource`] and never sees a Kubernetes type: Cargo keeps it that way
//! (`scripts/check-deps`). See `docs/architecture.md` for the flow objects -> translate -> compile ->
//! publish -> shard -> connection.

pub mod admin;
pub mod backend;
pub mod bufpool;
pub mod conn;
pub mod demo;
pub mod drain;
pub mod echo;
pub mod forward;
pub mod grpc;
pub mod h2;
pub mod h2c;
pub mod h2c_pool;
pub mod http;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod publish;
pub mod rejection;
pub mod route;
pub mod serve;
pub mod shard;
pub mod shard_state;
pub mod sockets;
pub mod tls;
pub mod tls_poll;
pub mod websocket;

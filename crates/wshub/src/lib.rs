//! wshub server library (placeholder root; being written).
pub mod client_ip;
#[cfg(feature = "tls")]
pub mod tls;

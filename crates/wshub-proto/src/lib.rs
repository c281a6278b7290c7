//! # wshub-proto
//!
//! The sans-IO WebSocket protocol core of wshub: RFC 6455 (handshake, framing,
//! masking, UTF-8, close) and RFC 7692 (permessage-deflate), for both the server
//! and the client role. It knows nothing of sockets, runtimes or clocks: bytes go
//! in, events and bytes come out. The tokio server (`wshub`), the CLI and the load
//! generator all drive this same core.
//!
//! ## Layout
//! - [`handshake`]: the HTTP/1.1 Upgrade handshake, both sides.
//! - [`deflate`]: `Sec-WebSocket-Extensions` parsing, permessage-deflate
//!   negotiation and the compressor/decompressor.
//! - [`frame`]: frame headers and opcodes.
//! - [`mask`]: word-wise XOR masking.
//! - [`message`]: [`Message`], [`Text`] and [`PreparedMessage`].
//! - [`utf8`]: incremental UTF-8 validation that fails on the first bad fragment.
//! - [`connection`]: [`Connection`], the per-connection state machine.
//! - [`queue`]: the FIFO that holds one item without allocating, for the
//!   per-connection queues.
//! - [`Limits`], [`CloseCode`], [`ProtocolError`]: the limits, close codes and errors.
//!
//! ## Why hand-written
//! The framing, masking and UTF-8 streaming are the product's own core: they decide
//! its speed (zero-copy unmasking of the caller's buffer, no per-connection read
//! buffer, encode-once broadcast frames) and its strictness (Autobahn fail-fast
//! cases), which the existing crates (tungstenite, fastwebsockets) do not expose as a
//! sans-IO API. HTTP parsing (`httparse`), SHA-1, base64, UTF-8 validation
//! (`simdutf8`) and deflate (`flate2` on `zlib-rs`) come from well-kept crates.
pub mod close;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod limits;
pub mod mask;
pub mod message;
mod pool;
pub mod queue;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use connection::{Connection, Event, Role, State};
pub use error::{Error, ProtocolError};
pub use limits::Limits;
pub use message::{Message, PreparedMessage, Text};

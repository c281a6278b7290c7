//! # wshub
//!
//! The async (tokio) WebSocket server library of wshub: a server as simple to
//! start as `new WebSocket.Server({port})`, with a registry of clients and
//! broadcast, a heartbeat, bounded queues with a slow-consumer policy, the real
//! client IP behind trusted proxies, wss (rustls), and upgrades inside an axum or
//! hyper app on the same port. The protocol itself lives in the sans-IO
//! [`wshub_proto`] crate; this crate moves its bytes.
//!
//! ```no_run
//! use wshub::{Config, Server};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     let server = Server::new(Config::default());
//!     let clients = server.clients().clone();
//!     server
//!         .serve(
//!             listener,
//!             move |mut ws| {
//!                 let clients = clients.clone();
//!                 async move {
//!                     while let Some(msg) = ws.recv().await {
//!                         // Everyone but the sender.
//!                         clients.broadcast_except(ws.id(), msg);
//!                     }
//!                 }
//!             },
//!             async { tokio::signal::ctrl_c().await.unwrap_or(()) },
//!         )
//!         .await
//! }
//! ```
//!
//! ## Layout
//! - [`server`]: [`Server`]: accept loop, upgrade handshake, graceful shutdown.
//! - [`config`]: [`Config`] and its builder, with every default documented.
//! - [`socket`]: [`WebSocket`], the application's handle to a connection.
//! - `driver` (private): the per-connection task.
//! - [`headers`]: [`headers::RequestHeaders`], the upgrade request's fields, packed.
//! - [`registry`]: [`Clients`] and broadcast.
//! - [`client_ip`]: the client IP from the socket or trusted proxies.
//! - [`upgrade`]: upgrades inside hyper and axum apps.
//! - [`tls`]: rustls from PEM files (feature `tls`).
//! - [`cert_reload`]: a TLS certificate that reloads on file change or SIGHUP.
//! - [`client`]: a client on the same driver.
//! - [`close_codes`]: wshub's application close codes.
//! - [`hub`]: the hub's building blocks (protocol, auth, broker, memory engine).

#[cfg(feature = "tls")]
pub mod cert_reload;
pub mod client;
pub mod client_ip;
pub mod close_codes;
pub mod config;
mod driver;
pub mod error;
pub mod headers;
pub mod hub;
pub mod registry;
pub mod server;
pub mod socket;
#[cfg(feature = "tls")]
pub mod tls;
pub mod upgrade;

pub use config::{Config, SlowConsumerPolicy};
pub use error::Error;
pub use registry::{BroadcastReport, Clients};
pub use server::{Rejection, Server};
pub use socket::{ConnectionId, Disconnect, SendError, WebSocket};
pub use wshub_proto as proto;
pub use wshub_proto::{CloseCode, Message, PreparedMessage};

// Compile the README's Rust example as a doctest.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;

//! [`Clients`]: the set of open connections, and broadcast to all of them, to all
//! but one, or to those matching a predicate.
//!
//! A broadcast encodes its frame once ([`PreparedMessage`]) and appends a
//! reference-counted clone to each receiver's queue: O(receivers) cheap enqueues
//! on the caller's thread; the writes happen on each connection's own task.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use wshub_proto::{Message, PreparedMessage};

use crate::socket::{ConnectionId, Outbound, SendError, Shared, WebSocket};

/// Counts of one broadcast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Receivers the message was queued for.
    pub queued: usize,
    /// Receivers that were closing or closed.
    pub closed: usize,
    /// Receivers whose queue overflowed (closed as slow consumers).
    pub slow: usize,
}

/// The open connections of a server. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    map: Arc<RwLock<HashMap<ConnectionId, Arc<Shared>>>>,
}

impl Clients {
    pub(crate) fn insert(&self, shared: Arc<Shared>) {
        self.write().insert(shared.id, shared);
    }

    pub(crate) fn remove(&self, id: ConnectionId) {
        self.write().remove(&id);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ConnectionId, Arc<Shared>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ConnectionId, Arc<Shared>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are no open connections.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// A handle to connection `id`, if it is open.
    pub fn get(&self, id: ConnectionId) -> Option<WebSocket> {
        self.read().get(&id).map(|s| WebSocket::new(Arc::clone(s)))
    }

    /// Handles to every open connection (a snapshot).
    pub fn all(&self) -> Vec<WebSocket> {
        self.read()
            .values()
            .map(|s| WebSocket::new(Arc::clone(s)))
            .collect()
    }

    /// Sends `msg` to every open connection.
    pub fn broadcast(&self, msg: impl Into<Message>) -> BroadcastReport {
        self.broadcast_filter(msg, |_| true)
    }

    /// Sends `msg` to every open connection except `except` (typically the
    /// sender).
    pub fn broadcast_except(
        &self,
        except: ConnectionId,
        msg: impl Into<Message>,
    ) -> BroadcastReport {
        self.broadcast_filter(msg, |ws| ws.id() != except)
    }

    /// Sends `msg` to the open connections for which `filter` returns `true`.
    pub fn broadcast_filter(
        &self,
        msg: impl Into<Message>,
        filter: impl Fn(&ClientRef<'_>) -> bool,
    ) -> BroadcastReport {
        let prepared = Arc::new(PreparedMessage::new(&msg.into()));
        self.broadcast_prepared(&prepared, filter)
    }

    /// Sends an already prepared frame to the connections matching `filter`.
    pub fn broadcast_prepared(
        &self,
        prepared: &Arc<PreparedMessage>,
        filter: impl Fn(&ClientRef<'_>) -> bool,
    ) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        let map = self.read();
        for shared in map.values() {
            if !filter(&ClientRef(shared)) {
                continue;
            }
            match shared.push(Outbound::Prepared(Arc::clone(prepared))) {
                Ok(()) => report.queued += 1,
                Err(SendError::SlowConsumer) => report.slow += 1,
                Err(_) => report.closed += 1,
            }
        }
        report
    }

    /// Closes every connection with `code` and `reason`.
    pub fn close_all(&self, code: wshub_proto::CloseCode, reason: &str) {
        for shared in self.read().values() {
            let _ = shared.push(Outbound::Close(code, reason.to_owned()));
        }
    }

    /// Drops every connection without a close handshake.
    pub fn terminate_all(&self) {
        for ws in self.all() {
            ws.terminate();
        }
    }
}

/// A borrowed view of a connection, given to broadcast filters without taking a
/// handle.
#[derive(Debug, Clone, Copy)]
pub struct ClientRef<'a>(&'a Shared);

impl ClientRef<'_> {
    /// The connection id.
    pub fn id(&self) -> ConnectionId {
        self.0.id
    }

    /// The resolved client IP.
    pub fn client_ip(&self) -> std::net::IpAddr {
        self.0.info.client_ip
    }

    /// The request path.
    pub fn path(&self) -> &str {
        self.0.info.path()
    }

    /// The request query string.
    pub fn query(&self) -> Option<&str> {
        self.0.info.query()
    }

    /// The negotiated subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.0.info.protocol.as_deref()
    }
}

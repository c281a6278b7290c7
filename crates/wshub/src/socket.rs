//! [`WebSocket`]: the application's handle to one connection, and the state it
//! shares with that connection's driver task.
//!
//! Sending never blocks and never does I/O: it appends to the connection's
//! outbound queue (bounded in bytes, see [`SlowConsumerPolicy`]) and wakes the
//! driver, which encodes and writes everything queued with one vectored write.
//! Receiving pops from an inbound queue the driver fills; when the application
//! falls behind, the driver stops reading from the socket (TCP backpressure).

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use wshub_proto::queue::Queue;
use wshub_proto::{CloseCode, Message, PreparedMessage, ProtocolError};

use crate::config::SlowConsumerPolicy;
use crate::headers::RequestHeaders;

/// A connection's id, unique within the process (across servers and clients).
pub type ConnectionId = u64;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh process-wide connection id.
pub(crate) fn next_id() -> ConnectionId {
    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why a connection ended.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The close handshake completed. `code` is 1005 if the closing frame carried
    /// none; `by_peer` says who started it.
    Closed {
        /// Close code of the frame that started the handshake.
        code: CloseCode,
        /// Its reason text.
        reason: String,
        /// Whether the peer started the close handshake.
        by_peer: bool,
    },
    /// The peer broke the protocol; it was sent the matching close code.
    Protocol(ProtocolError),
    /// The peer did not answer a heartbeat ping in time; the TCP connection was
    /// dropped.
    PongTimeout,
    /// The peer did not answer our close frame in time.
    CloseTimeout,
    /// The socket accepted no bytes for the write-stall timeout.
    WriteStalled,
    /// The outbound queue overflowed under [`SlowConsumerPolicy::Close`].
    SlowConsumer,
    /// [`WebSocket::terminate`] was called, or shutdown ran out of time.
    Terminated,
    /// The TCP connection ended without a close frame (close code 1006).
    Abnormal,
    /// A read or write failed.
    Io(String),
    /// The connection handler panicked; the peer was sent close 1011.
    HandlerPanicked,
}

impl Disconnect {
    /// The close code that describes this end (1006 when no close frame was
    /// exchanged).
    pub fn code(&self) -> CloseCode {
        match self {
            Disconnect::Closed { code, .. } => *code,
            Disconnect::Protocol(e) => e.close_code(),
            Disconnect::SlowConsumer => crate::close_codes::SLOW_CONSUMER,
            Disconnect::HandlerPanicked => CloseCode::INTERNAL_ERROR,
            _ => CloseCode::ABNORMAL,
        }
    }
}

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disconnect::Closed {
                code,
                reason,
                by_peer,
            } => {
                let who = if *by_peer { "peer" } else { "server" };
                write!(f, "closed by {who} with {code} {reason:?}")
            }
            Disconnect::Protocol(e) => write!(f, "protocol error: {e}"),
            Disconnect::PongTimeout => f.write_str("pong timeout"),
            Disconnect::CloseTimeout => f.write_str("close handshake timeout"),
            Disconnect::WriteStalled => f.write_str("write stalled"),
            Disconnect::SlowConsumer => f.write_str("slow consumer"),
            Disconnect::Terminated => f.write_str("terminated"),
            Disconnect::Abnormal => f.write_str("connection lost without a close frame"),
            Disconnect::Io(e) => write!(f, "i/o error: {e}"),
            Disconnect::HandlerPanicked => f.write_str("the connection handler panicked"),
        }
    }
}

/// Why a send (or ping, or close) was not queued.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is closing or closed.
    #[error("the connection is closed")]
    Closed,
    /// The outbound queue is full and the policy is
    /// [`SlowConsumerPolicy::Close`]: the connection is being closed.
    #[error("the outbound queue is full; closing the slow connection")]
    SlowConsumer,
    /// A ping payload over 125 bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLarge(usize),
    /// A close code that may not be sent.
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
}

/// Facts about a connection, fixed at the handshake. Every open connection
/// holds one, so it is kept compact: the path and query share one allocation,
/// the headers are packed into another ([`RequestHeaders`]).
#[derive(Debug)]
pub(crate) struct Info {
    pub(crate) peer_addr: SocketAddr,
    pub(crate) client_ip: IpAddr,
    /// The path, then `?` and the query if the request had one.
    target: Box<str>,
    path_len: u32,
    pub(crate) headers: Option<RequestHeaders>,
    pub(crate) protocol: Option<Box<str>>,
    pub(crate) deflate: bool,
}

impl Info {
    pub(crate) fn new(
        peer_addr: SocketAddr,
        client_ip: IpAddr,
        path: &str,
        query: Option<&str>,
        headers: Option<RequestHeaders>,
        protocol: Option<String>,
        deflate: bool,
    ) -> Info {
        let (target, path_len) = match (query, u32::try_from(path.len())) {
            (_, Err(_)) => (Box::from("/"), 1),
            (Some(q), Ok(n)) => (format!("{path}?{q}").into_boxed_str(), n),
            (None, Ok(n)) => (Box::from(path), n),
        };
        Info {
            peer_addr,
            client_ip,
            target,
            path_len,
            headers,
            protocol: protocol.map(String::into_boxed_str),
            deflate,
        }
    }

    pub(crate) fn path(&self) -> &str {
        self.target.get(..self.path_len as usize).unwrap_or("/")
    }

    pub(crate) fn query(&self) -> Option<&str> {
        self.target.get(self.path_len as usize + 1..)
    }
}

/// An item of the outbound queue.
#[derive(Debug)]
pub(crate) enum Outbound {
    Message(Message),
    Prepared(Arc<PreparedMessage>),
    Ping(Bytes),
    Close(CloseCode, String),
}

impl Outbound {
    fn len(&self) -> usize {
        match self {
            Outbound::Message(m) => m.len(),
            Outbound::Prepared(p) => p.message().len(),
            Outbound::Ping(b) => b.len(),
            Outbound::Close(_, r) => r.len() + 2,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) out: Queue<Outbound>,
    /// Payload bytes in `out`.
    pub(crate) out_bytes: usize,
    /// Bytes the driver has encoded but not yet written.
    pub(crate) wire_bytes: usize,
    /// No more sends are accepted (close queued, terminate, slow consumer).
    pub(crate) closing: bool,
    pub(crate) terminate: bool,
    pub(crate) slow: bool,
    pub(crate) driver: Option<Waker>,
    pub(crate) inbound: Queue<Message>,
    pub(crate) inbound_bytes: usize,
    /// Tasks waiting in `recv` (usually one; clones may each wait).
    pub(crate) readers: Queue<Waker>,
    pub(crate) ended: Option<Disconnect>,
    pub(crate) handles: usize,
    pub(crate) dropped: u64,
}

/// State shared by the driver, the application's handles and the registry.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: ConnectionId,
    pub(crate) info: Info,
    pub(crate) max_queue_bytes: usize,
    pub(crate) policy: SlowConsumerPolicy,
    pub(crate) max_inbound_bytes: usize,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) ended: tokio::sync::Notify,
    /// Who asked the driver for a turn, and whether it is in one: in the
    /// connection's own allocation, which a send touches anyway (a separate
    /// one costs a cache miss per delivery when thousands of connections each
    /// get one).
    pub(crate) gate: Gate,
    /// The handler's waker (see [`Gate`]).
    pub(crate) handler_waker: Arc<HandlerWaker>,
}

/// The driver polls its handler only when the handler asked for it. The
/// handler is a future polled inside the driver's task, and the task wakes
/// for every queued message, every readable socket and every timer, most of
/// which the handler does not wait for: in a fan-out at a low rate, where
/// each delivery wakes the connection's task on its own, polling the handler
/// each time (a hub session: its command channel, its socket, its timers) was
/// 6 % of the CPU of a hub fanning out to 5,000 subscribers (perf: user space
/// 30 % of it before, 24 % after).
///
/// So the handler is polled with its own waker, a [`HandlerWaker`]: a wake sets
/// [`Gate::HANDLER`] and wakes the driver's task. Sends and the other
/// reasons to wake the driver set [`Gate::POKED`] instead. While the driver is
/// in its poll ([`Gate::POLLING`]) neither wakes the task: the driver looks at
/// both bits before it returns, so a message its own handler sends goes out in
/// the same poll, without the task being scheduled once more for it.
///
/// A wake finding any bit set does nothing more: the driver is polling, or a
/// wake of its task is already on its way, and the driver clears the bits
/// when it polls.
#[derive(Debug)]
pub(crate) struct Gate(AtomicU8);

impl Gate {
    /// The handler asked to be polled.
    pub(crate) const HANDLER: u8 = 1;
    /// Something else needs the driver: a send, a close, a terminate.
    pub(crate) const POKED: u8 = 2;
    /// The driver is in its poll.
    pub(crate) const POLLING: u8 = 4;

    /// A gate whose handler is due for its first poll.
    pub(crate) fn new() -> Gate {
        Gate(AtomicU8::new(Gate::HANDLER))
    }

    /// Sets `bits`; true if the caller must wake the driver's task (nothing
    /// was set: the driver is not polling and no wake is on its way).
    fn set(&self, bits: u8) -> bool {
        self.0.fetch_or(bits, Ordering::AcqRel) == 0
    }

    /// The driver enters its poll.
    pub(crate) fn enter(&self) {
        self.0.fetch_or(Gate::POLLING, Ordering::AcqRel);
    }

    /// Clears `bit` and returns whether it was set.
    pub(crate) fn take(&self, bit: u8) -> bool {
        // A plain load first: the bit is usually clear, and then the
        // read-modify-write is not needed.
        self.is_set(bit) && self.0.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Whether `bit` is set.
    pub(crate) fn is_set(&self, bit: u8) -> bool {
        self.0.load(Ordering::Acquire) & bit != 0
    }

    /// The driver leaves its poll; returns the bits set while it polled
    /// (which it must act on before it waits: their wakes were not sent).
    pub(crate) fn leave(&self) -> u8 {
        self.0.fetch_and(!Gate::POLLING, Ordering::AcqRel) & !Gate::POLLING
    }
}

/// The waker the driver polls its handler with: sets [`Gate::HANDLER`].
#[derive(Debug)]
pub(crate) struct HandlerWaker {
    /// Weak: the waker can outlive the connection (in a timer, a channel),
    /// and the connection's state keeps the waker.
    shared: Weak<Shared>,
}

impl HandlerWaker {
    pub(crate) fn new(shared: &Weak<Shared>) -> Arc<HandlerWaker> {
        Arc::new(HandlerWaker {
            shared: Weak::clone(shared),
        })
    }
}

impl Wake for HandlerWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if shared.gate.set(Gate::HANDLER) {
            let w = shared.lock().driver.take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The driver's waker, taken if the driver must be woken for a change the
    /// caller made under `inner` (see [`Gate`]); wake it after unlocking.
    fn poke(&self, inner: &mut Inner) -> Option<Waker> {
        if self.gate.set(Gate::POKED) {
            inner.driver.take()
        } else {
            None
        }
    }

    /// Queues `item`, applying the queue limit and slow-consumer policy. Pings
    /// and close requests are tiny and never count against the limit: a close
    /// must not be lost to a full queue.
    pub(crate) fn push(&self, item: Outbound) -> Result<(), SendError> {
        self.push_with(item, self.policy).map(drop)
    }

    /// [`push`](Self::push) with an explicit slow-consumer policy for this
    /// item; returns how many older messages drop-oldest discarded for it.
    pub(crate) fn push_with(
        &self,
        item: Outbound,
        policy: SlowConsumerPolicy,
    ) -> Result<usize, SendError> {
        let mut dropped = 0;
        let len = item.len();
        let control = matches!(item, Outbound::Close(..) | Outbound::Ping(_));
        let mut inner = self.lock();
        if inner.closing || inner.ended.is_some() {
            return Err(SendError::Closed);
        }
        let queued = inner.out_bytes + inner.wire_bytes;
        if !control && queued > 0 && queued + len > self.max_queue_bytes {
            match policy {
                SlowConsumerPolicy::Close => {
                    inner.slow = true;
                    inner.closing = true;
                    let w = self.poke(&mut inner);
                    drop(inner);
                    if let Some(w) = w {
                        w.wake();
                    }
                    return Err(SendError::SlowConsumer);
                }
                SlowConsumerPolicy::DropOldest => {
                    // Drop whole queued messages, oldest first, until the new one
                    // fits. Bytes already encoded for the socket cannot be taken
                    // back, so when only those remain the newest message is still
                    // kept: the queue then exceeds the limit by at most what the
                    // driver has encoded.
                    while inner.out_bytes + inner.wire_bytes + len > self.max_queue_bytes {
                        let Some(pos) = inner
                            .out
                            .iter()
                            .position(|o| !matches!(o, Outbound::Close(..) | Outbound::Ping(_)))
                        else {
                            break;
                        };
                        if let Some(old) = inner.out.remove(pos) {
                            inner.out_bytes -= old.len();
                            inner.dropped += 1;
                            dropped += 1;
                        }
                    }
                }
            }
        }
        if matches!(item, Outbound::Close(..)) {
            inner.closing = true;
        }
        inner.out_bytes += len;
        inner.out.push_back(item);
        let w = self.poke(&mut inner);
        drop(inner);
        if let Some(w) = w {
            w.wake();
        }
        Ok(dropped)
    }

    /// Why the connection ended, once it has.
    pub(crate) fn ended_reason(&self) -> Option<Disconnect> {
        self.lock().ended.clone()
    }

    /// Records the end of the connection (once) and wakes everyone waiting.
    pub(crate) fn mark_ended(&self, reason: Disconnect) {
        let readers = {
            let mut inner = self.lock();
            if inner.ended.is_none() {
                inner.ended = Some(reason);
            }
            inner.closing = true;
            inner.out.clear();
            inner.out_bytes = 0;
            std::mem::take(&mut inner.readers)
        };
        for w in readers {
            w.wake();
        }
        self.ended.notify_waiters();
    }

    fn wake_driver(&self) {
        let w = {
            let mut inner = self.lock();
            self.poke(&mut inner)
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// The application's handle to one WebSocket connection.
///
/// Cheap to clone (all clones refer to the same connection). When the last
/// handle is dropped and the connection handler has returned, the connection is
/// closed with 1000.
///
/// ```no_run
/// # async fn f(mut ws: wshub::WebSocket) {
/// ws.send("something").ok();
/// while let Some(msg) = ws.recv().await {
///     println!("received: {:?}", msg);
/// }
/// println!("gone: {:?}", ws.disconnect());
/// # }
/// ```
#[derive(Debug)]
pub struct WebSocket {
    pub(crate) shared: Arc<Shared>,
}

impl WebSocket {
    pub(crate) fn new(shared: Arc<Shared>) -> WebSocket {
        shared.lock().handles += 1;
        WebSocket { shared }
    }

    /// The connection's id (unique in this process).
    pub fn id(&self) -> ConnectionId {
        self.shared.id
    }

    /// The TCP peer address (a proxy's, behind a proxy).
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.info.peer_addr
    }

    /// The client's IP: the peer address, or for a peer inside the configured
    /// trusted proxies, the address those proxies report (see
    /// [`client_ip`](crate::client_ip)).
    pub fn client_ip(&self) -> IpAddr {
        self.shared.info.client_ip
    }

    /// The request path of the upgrade request, without the query.
    pub fn path(&self) -> &str {
        self.shared.info.path()
    }

    /// The query string of the upgrade request, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.shared.info.query()
    }

    /// The upgrade request's headers (unless [`keep_headers`](crate::config::Builder::keep_headers)
    /// was turned off), but for the handshake's own fields
    /// ([`HANDSHAKE_FIELDS`](crate::headers::HANDSHAKE_FIELDS)).
    /// [`RequestHeaders::to_header_map`] turns them into an `http::HeaderMap`.
    pub fn headers(&self) -> Option<&RequestHeaders> {
        self.shared.info.headers.as_ref()
    }

    /// The negotiated subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.shared.info.protocol.as_deref()
    }

    /// Whether permessage-deflate was negotiated.
    pub fn is_compressed(&self) -> bool {
        self.shared.info.deflate
    }

    /// Whether the connection is open (no close queued, not ended).
    pub fn is_open(&self) -> bool {
        let inner = self.shared.lock();
        !inner.closing && inner.ended.is_none()
    }

    /// Messages dropped under [`SlowConsumerPolicy::DropOldest`].
    pub fn dropped_messages(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Bytes queued for this connection and not yet written to its socket.
    pub fn buffered_amount(&self) -> usize {
        let inner = self.shared.lock();
        inner.out_bytes + inner.wire_bytes
    }

    /// Queues a message (text for `&str`/`String`, binary for `Vec<u8>`/`Bytes`).
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), SendError> {
        self.shared.push(Outbound::Message(msg.into()))
    }

    /// Queues a text message.
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send(Message::Text(text.into()))
    }

    /// Queues a binary message.
    pub fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send(Message::Binary(data.into()))
    }

    /// Queues a frame that was encoded once for many receivers.
    pub fn send_prepared(&self, msg: &Arc<PreparedMessage>) -> Result<(), SendError> {
        self.shared.push(Outbound::Prepared(Arc::clone(msg)))
    }

    /// Queues a prepared frame like [`send_prepared`](Self::send_prepared), but
    /// with `policy` instead of the connection's slow-consumer policy deciding
    /// what happens when the queue is full (a hub applies its channels' own
    /// policies this way). Returns how many older messages
    /// [`DropOldest`](SlowConsumerPolicy::DropOldest) discarded to make room.
    pub fn send_prepared_with(
        &self,
        msg: &Arc<PreparedMessage>,
        policy: SlowConsumerPolicy,
    ) -> Result<usize, SendError> {
        self.shared
            .push_with(Outbound::Prepared(Arc::clone(msg)), policy)
    }

    /// Queues a ping (payload at most 125 bytes). The heartbeat pings on its own;
    /// this is for applications that want more.
    pub fn ping(&self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        let payload = payload.into();
        if payload.len() > 125 {
            return Err(SendError::ControlTooLarge(payload.len()));
        }
        self.shared.push(Outbound::Ping(payload))
    }

    /// Starts the close handshake after everything already queued. The reason is
    /// cut to 123 bytes. Further sends fail with [`SendError::Closed`].
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !code.is_valid_on_wire() {
            return Err(SendError::InvalidCloseCode(code.0));
        }
        self.shared.push(Outbound::Close(code, reason.to_owned()))
    }

    /// Drops the TCP connection now, without a close handshake (like `ws`'s
    /// `terminate()`).
    pub fn terminate(&self) {
        {
            let mut inner = self.shared.lock();
            inner.terminate = true;
            inner.closing = true;
        }
        self.shared.wake_driver();
    }

    /// Receives the next message; `None` once the connection has ended and every
    /// received message was returned.
    pub async fn recv(&mut self) -> Option<Message> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message (see [`recv`](Self::recv)).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let mut inner = self.shared.lock();
        if let Some(m) = inner.inbound.pop_front() {
            let was_full = inner.inbound_bytes >= self.shared.max_inbound_bytes;
            inner.inbound_bytes -= m.len();
            let w = if was_full && inner.inbound_bytes < self.shared.max_inbound_bytes {
                self.shared.poke(&mut inner)
            } else {
                None
            };
            drop(inner);
            if let Some(w) = w {
                w.wake();
            }
            return Poll::Ready(Some(m));
        }
        if inner.ended.is_some() {
            return Poll::Ready(None);
        }
        if !inner.readers.iter().any(|w| w.will_wake(cx.waker())) {
            inner.readers.push_back(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Why the connection ended, once it has.
    pub fn disconnect(&self) -> Option<Disconnect> {
        self.shared.lock().ended.clone()
    }

    /// Waits until the connection has ended and returns why.
    pub async fn closed(&self) -> Disconnect {
        loop {
            let notified = self.shared.ended.notified();
            if let Some(d) = self.disconnect() {
                return d;
            }
            notified.await;
        }
    }
}

impl Clone for WebSocket {
    fn clone(&self) -> Self {
        WebSocket::new(Arc::clone(&self.shared))
    }
}

impl Drop for WebSocket {
    fn drop(&mut self) {
        let last = {
            let mut inner = self.shared.lock();
            inner.handles -= 1;
            inner.handles == 0
        };
        if last {
            self.shared.wake_driver();
        }
    }
}

impl futures_core::Stream for WebSocket {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.poll_recv(cx)
    }
}

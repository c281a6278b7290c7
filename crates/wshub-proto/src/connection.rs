//! [`Connection`]: the sans-IO state machine of one open WebSocket, after the
//! handshake.
//!
//! It owns the frame decoder (streaming: payload bytes are unmasked in the
//! caller's buffer and consumed at once, only an unfinished header of at most 13
//! bytes is kept), message reassembly with incremental UTF-8 checks and
//! permessage-deflate, the close handshake, the heartbeat timers, and a queue of
//! encoded output the caller writes with one vectored write.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::close::{CloseCode, CloseFrame};
use crate::deflate::{DeflateError, DeflateParams, Deflater, Inflater};
use crate::error::{Error, ProtocolError};
use crate::frame::{FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::limits::Limits;
use crate::mask::apply_mask;
use crate::message::{Message, PreparedMessage, Text};
use crate::queue::Queue;
use crate::utf8::Utf8Validator;

/// Which end of the connection this is. It decides masking: clients mask every
/// frame they send and servers none (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The accepting side.
    Server,
    /// The connecting side.
    Client,
}

/// Settings of one [`Connection`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct Config {
    /// Server or client.
    pub role: Role,
    /// Size limits. Default: [`Limits::default`].
    pub limits: Limits,
    /// The negotiated permessage-deflate parameters, if any. Default: none.
    pub deflate: Option<DeflateParams>,
    /// zlib level (0–9) for messages this side compresses. Default is 1: most of
    /// the size win for a fraction of the CPU of the default 6.
    pub compression_level: u32,
    /// Messages shorter than this are sent uncompressed even with deflate on.
    /// Default is 64 bytes: below that the deflate framing eats the gain.
    pub compression_min_size: usize,
    /// Send a ping this often. Default: 25 s; `None` disables the heartbeat.
    pub ping_interval: Option<Duration>,
    /// A peer that has not answered a ping with a pong after this long is timed out
    /// ([`Timeout::Pong`]). Default: 10 s.
    pub pong_timeout: Duration,
    /// How long to wait for the peer's close frame after sending ours (or, after a
    /// protocol error, for the peer to go away). Default: 5 s.
    pub close_timeout: Duration,
    /// Most pongs queued but not yet written. A peer pinging faster than it reads
    /// is failed with close 1008. Default: 16 (not 1: a peer may send several
    /// pings in one segment and expects a pong for each, as Autobahn 2.10 does).
    pub max_pending_pongs: usize,
    /// After a protocol error, hold the close frame until
    /// [`Connection::commit_failure`] instead of queueing it at once, so the
    /// application can still answer the messages that arrived before the bad
    /// frame (an echo server answers them before failing, as RFC 6455 peers such
    /// as Autobahn expect). Reading stops at the error either way. Default: false.
    pub defer_error_close: bool,
}

impl Config {
    /// Defaults for `role`.
    pub fn new(role: Role) -> Config {
        Config {
            role,
            limits: Limits::default(),
            deflate: None,
            compression_level: 1,
            compression_min_size: 64,
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_pending_pongs: 16,
            defer_error_close: false,
        }
    }

    /// Sets [`Config::limits`].
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`Config::deflate`].
    #[must_use]
    pub fn with_deflate(mut self, params: Option<DeflateParams>) -> Self {
        self.deflate = params;
        self
    }

    /// Sets [`Config::ping_interval`] and [`Config::pong_timeout`].
    #[must_use]
    pub fn with_heartbeat(mut self, interval: Option<Duration>, pong_timeout: Duration) -> Self {
        self.ping_interval = interval;
        self.pong_timeout = pong_timeout;
        self
    }

    /// Sets [`Config::defer_error_close`].
    #[must_use]
    pub fn with_deferred_error_close(mut self, on: bool) -> Self {
        self.defer_error_close = on;
        self
    }

    /// Sets [`Config::close_timeout`].
    #[must_use]
    pub fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Sets [`Config::compression_level`] (clamped to 0–9) and
    /// [`Config::compression_min_size`].
    #[must_use]
    pub fn with_compression(mut self, level: u32, min_size: usize) -> Self {
        self.compression_level = level.min(9);
        self.compression_min_size = min_size;
        self
    }
}

/// Something the peer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text or binary message.
    Message(Message),
    /// A ping; the pong is already queued.
    Ping(Bytes),
    /// A pong (solicited or not).
    Pong(Bytes),
    /// The peer's close frame (`None` if it carried no status code). If this side
    /// had not sent a close frame yet, the reply echoing the code is queued. The
    /// connection is now [`State::Closed`].
    Close(Option<CloseFrame>),
}

/// Where the close handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// This side sent a close frame and waits for the peer's.
    CloseSent,
    /// Both close frames are exchanged, or the connection failed. Write out what is
    /// queued, then close the transport.
    Closed,
}

/// A timer of the connection ran out; the caller should drop the transport.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Timeout {
    /// The peer did not answer a heartbeat ping in time.
    #[error("no pong received within the pong timeout")]
    Pong,
    /// The close handshake did not complete in time.
    #[error("the close handshake did not complete in time")]
    Close,
}

/// The frame whose payload is being received.
#[derive(Debug)]
struct RxFrame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes already received.
    pos: u64,
    remaining: u64,
}

/// The message being reassembled.
#[derive(Debug)]
struct RxMessage {
    text: bool,
    compressed: bool,
    fragments: usize,
    buf: Vec<u8>,
    utf8: Utf8Validator,
}

/// Initial reservation for a message buffer; larger messages grow as bytes
/// actually arrive, so a header announcing a huge frame allocates nothing.
const INITIAL_RESERVE: u64 = 64 * 1024;

/// Payloads up to this size are copied next to their header in one buffer, so a
/// small frame costs one iovec; larger ones are queued as their own `Bytes`.
const COALESCE_MAX: usize = 1024;

/// Block size of the per-thread arena that headers and small frames are cut from.
const ARENA_BLOCK: usize = 16 * 1024;

thread_local! {
    static ARENA: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Builds one contiguous frame in the per-thread arena and cuts it off as `Bytes`.
/// Idle connections hold no buffer: the arena belongs to the thread, and a block is
/// freed once every frame cut from it has been written.
fn arena_frame(len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    ARENA.with(|cell| match cell.try_borrow_mut() {
        Ok(mut arena) => {
            if arena.capacity() - arena.len() < len {
                *arena = BytesMut::with_capacity(len.max(ARENA_BLOCK));
            }
            fill(&mut arena);
            arena.split().freeze()
        }
        Err(_) => {
            let mut own = BytesMut::with_capacity(len);
            fill(&mut own);
            own.freeze()
        }
    })
}

/// One WebSocket connection after the handshake, without I/O.
///
/// # Call order
/// 1. Bytes read from the transport go to [`handle_input`](Self::handle_input).
///    It consumes all of them, unmasking in place, so the caller may read into a
///    shared scratch buffer.
/// 2. Drain [`poll_event`](Self::poll_event) until `None`.
/// 3. Queue outgoing data with [`send`](Self::send), [`send_prepared`](Self::send_prepared),
///    [`ping`](Self::ping) and [`close`](Self::close).
/// 4. Write what [`chunks_vectored`](Self::chunks_vectored) returns with one
///    vectored write and report it with [`advance_output`](Self::advance_output).
/// 5. Sleep until [`poll_timeout`](Self::poll_timeout) or new input, then call
///    [`handle_timeout`](Self::handle_timeout); an `Err` means drop the transport.
/// 6. When [`state`](Self::state) is [`State::Closed`] and the output is written,
///    close the transport.
///
/// ```
/// use std::time::Instant;
/// use wshub_proto::connection::{Config, Connection, Event, Role};
/// use wshub_proto::message::Message;
///
/// let now = Instant::now();
/// let mut server = Connection::new(Config::new(Role::Server), now);
/// // A masked "Hello" text frame from a client (RFC 6455 §5.7).
/// let mut input = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
/// server.handle_input(now, &mut input).unwrap();
/// assert_eq!(server.poll_event(), Some(Event::Message(Message::from("Hello"))));
/// server.send(Message::from("Hi")).unwrap();
/// let mut iov = [std::io::IoSlice::new(&[]); 8];
/// let n = server.chunks_vectored(&mut iov);
/// let bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
/// assert_eq!(bytes, [0x81, 0x02, b'H', b'i']);
/// ```
#[derive(Debug)]
pub struct Connection {
    /// Shared by every connection of a server that passes the same `Arc`
    /// (settings are the same for all of them; an idle connection should not
    /// carry its own copy).
    config: Arc<Config>,
    state: State,
    /// Bytes of a frame header cut by the end of a read.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    frame: Option<RxFrame>,
    /// The control frame payload being received. Empty, and holding no
    /// allocation, between control frames: an idle connection keeps none.
    ctrl: Vec<u8>,
    msg: Option<RxMessage>,
    /// The peer's close frame arrived, or we failed: ignore further input.
    rx_done: bool,
    close_sent: bool,
    /// [`commit_failure`](Self::commit_failure) ran: errors close at once now.
    error_close_committed: bool,
    events: Queue<Event>,
    out: Queue<Bytes>,
    out_len: usize,
    pending_pongs: usize,
    /// Decompressor kept between messages (context takeover) or borrowed from the
    /// thread's pool while a message is being inflated.
    inflater: Option<Box<Inflater>>,
    /// Compressor kept between messages when this side uses context takeover.
    deflater: Option<Box<Deflater>>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    rng: Option<fastrand::Rng>,
    deferred_failure: Option<ProtocolError>,
}

impl Connection {
    /// A connection that completed its handshake at `now`.
    ///
    /// `config` is a [`Config`], or an `Arc<Config>` shared with other
    /// connections that have the same settings.
    pub fn new(config: impl Into<Arc<Config>>, now: Instant) -> Connection {
        let config = config.into();
        let next_ping = config.ping_interval.map(|i| now + i);
        let rng = match config.role {
            Role::Client => Some(fastrand::Rng::with_seed(seed())),
            Role::Server => None,
        };
        Connection {
            config,
            state: State::Open,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            frame: None,
            ctrl: Vec::new(),
            msg: None,
            rx_done: false,
            close_sent: false,
            error_close_committed: false,
            events: Queue::new(),
            out: Queue::new(),
            out_len: 0,
            pending_pongs: 0,
            inflater: None,
            deflater: None,
            next_ping,
            pong_deadline: None,
            close_deadline: None,
            rng,
            deferred_failure: None,
        }
    }

    /// The connection's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether permessage-deflate is in use.
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.config.deflate
    }

    // ---------------------------------------------------------------- input

    /// Feeds bytes read from the transport. All of `input` is consumed; masked
    /// payloads are unmasked in place. Complete messages and control frames become
    /// [`Event`]s.
    ///
    /// On a protocol violation the matching close frame is queued, the connection
    /// becomes [`State::Closed`] and the error is returned; events decoded before
    /// the violation are still delivered. Input after the peer's close frame (or
    /// after a failure) is ignored.
    pub fn handle_input(&mut self, now: Instant, input: &mut [u8]) -> Result<(), ProtocolError> {
        match self.decode(input) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.fail(now, &e);
                Err(e)
            }
        }
    }

    fn decode(&mut self, input: &mut [u8]) -> Result<(), ProtocolError> {
        let mut i = 0;
        while i < input.len() && !self.rx_done {
            let Some(frame) = self.frame.as_mut() else {
                i += self.decode_header(&input[i..])?;
                continue;
            };
            let take =
                (input.len() - i).min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
            let chunk = &mut input[i..i + take];
            if let Some(key) = frame.mask {
                apply_mask(chunk, key, (frame.pos & 3) as usize);
            }
            frame.pos += take as u64;
            frame.remaining -= take as u64;
            let done = frame.remaining == 0;
            i += take;
            self.payload(chunk)?;
            if done {
                self.finish_frame()?;
            }
        }
        Ok(())
    }

    /// Decodes a frame header from `input` (after any stashed partial header) and
    /// returns how many bytes of `input` it used.
    fn decode_header(&mut self, input: &[u8]) -> Result<usize, ProtocolError> {
        let stashed = usize::from(self.hdr_len);
        let parsed = if stashed == 0 {
            FrameHeader::parse(input)?
        } else {
            let take = input.len().min(MAX_HEADER_LEN - stashed);
            self.hdr[stashed..stashed + take].copy_from_slice(&input[..take]);
            FrameHeader::parse(&self.hdr[..stashed + take])?
        };
        let Some((header, len)) = parsed else {
            // Incomplete: stash what we have (at most 13 bytes in total).
            let take = input.len().min(MAX_HEADER_LEN - stashed);
            if stashed == 0 {
                self.hdr[..take].copy_from_slice(&input[..take]);
            }
            self.hdr_len = (stashed + take) as u8;
            return Ok(take);
        };
        self.hdr_len = 0;
        self.start_frame(header)?;
        if self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
            self.finish_frame()?;
        }
        Ok(len - stashed)
    }

    fn start_frame(&mut self, h: FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv2 || h.rsv3 {
            return Err(ProtocolError::ReservedBits);
        }
        if h.rsv1
            && (self.config.deflate.is_none() || !matches!(h.opcode, OpCode::Text | OpCode::Binary))
        {
            return Err(ProtocolError::ReservedBits);
        }
        match (self.config.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let limits = self.config.limits;
        if h.opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlTooLarge(h.payload_len));
            }
            self.ctrl.clear();
        } else {
            match (h.opcode, self.msg.as_mut()) {
                (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
                (OpCode::Continuation, Some(m)) => {
                    m.fragments += 1;
                    if m.fragments > limits.max_fragments {
                        return Err(ProtocolError::TooManyFragments {
                            max: limits.max_fragments,
                        });
                    }
                }
                (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
                (_, None) => {
                    self.msg = Some(RxMessage {
                        text: h.opcode == OpCode::Text,
                        compressed: h.rsv1,
                        fragments: 1,
                        buf: Vec::new(),
                        utf8: Utf8Validator::default(),
                    });
                }
            }
            if h.payload_len > limits.max_frame_size as u64 {
                return Err(ProtocolError::FrameTooLarge {
                    size: h.payload_len,
                    max: limits.max_frame_size,
                });
            }
            if let Some(m) = self.msg.as_mut() {
                if !m.compressed {
                    if m.buf.len() as u64 + h.payload_len > limits.max_message_size as u64 {
                        return Err(ProtocolError::MessageTooLarge {
                            max: limits.max_message_size,
                        });
                    }
                    m.buf.reserve(h.payload_len.min(INITIAL_RESERVE) as usize);
                }
            }
        }
        self.frame = Some(RxFrame {
            opcode: h.opcode,
            fin: h.fin,
            mask: h.mask,
            pos: 0,
            remaining: h.payload_len,
        });
        Ok(())
    }

    /// Takes the next unmasked piece of the current frame's payload.
    fn payload(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        let Some(frame) = self.frame.as_ref() else {
            return Ok(());
        };
        if frame.opcode.is_control() {
            // start_frame bounded the control payload to 125 bytes.
            self.ctrl.extend_from_slice(chunk);
            return Ok(());
        }
        let max = self.config.limits.max_message_size;
        let Some(m) = self.msg.as_mut() else {
            return Ok(());
        };
        if m.compressed {
            let inflater = match self.inflater.as_mut() {
                Some(i) => i,
                None => self.inflater.insert(new_inflater(&self.config)?),
            };
            let before = m.buf.len();
            let inflated = inflater.decompress(chunk, false, &mut m.buf, max);
            // Check the text produced before any inflate error: the bytes came
            // first, and the verdict must not depend on how reads split the input.
            if m.text {
                m.utf8
                    .feed(&m.buf[before..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            inflated.map_err(|e| inflate_error(e, max))?;
        } else {
            if m.text {
                m.utf8.feed(chunk).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            m.buf.extend_from_slice(chunk);
        }
        Ok(())
    }

    fn finish_frame(&mut self) -> Result<(), ProtocolError> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        if frame.opcode.is_control() {
            return self.control(frame.opcode);
        }
        if !frame.fin {
            return Ok(());
        }
        let Some(mut m) = self.msg.take() else {
            return Ok(());
        };
        if m.compressed {
            let max = self.config.limits.max_message_size;
            let inflater = match self.inflater.as_mut() {
                Some(i) => i,
                None => self.inflater.insert(new_inflater(&self.config)?),
            };
            let before = m.buf.len();
            let inflated = inflater.decompress(&[], true, &mut m.buf, max);
            if m.text {
                m.utf8
                    .feed(&m.buf[before..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            inflated.map_err(|e| inflate_error(e, max))?;
            if self.peer_no_context_takeover() {
                if let Some(i) = self.inflater.take() {
                    crate::pool::give_inflater(i);
                }
            }
        }
        let data = Bytes::from(m.buf);
        let message = if m.text {
            m.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            Message::Text(Text::from_validated(data))
        } else {
            Message::Binary(data)
        };
        self.events.push_back(Event::Message(message));
        Ok(())
    }

    fn control(&mut self, opcode: OpCode) -> Result<(), ProtocolError> {
        let payload = std::mem::take(&mut self.ctrl);
        match opcode {
            OpCode::Ping => {
                let data = Bytes::from(payload);
                if !self.close_sent {
                    self.pending_pongs += 1;
                    if self.pending_pongs > self.config.max_pending_pongs {
                        return Err(ProtocolError::PingFlood);
                    }
                    self.queue_control(OpCode::Pong, &data);
                }
                self.events.push_back(Event::Ping(data));
            }
            OpCode::Pong => {
                self.pong_deadline = None;
                self.events.push_back(Event::Pong(Bytes::from(payload)));
            }
            OpCode::Close => {
                let frame = parse_close(&payload)?;
                self.rx_done = true;
                self.msg = None;
                if !self.close_sent {
                    self.close_sent = true;
                    let mut body = [0u8; MAX_CONTROL_PAYLOAD];
                    let n = match &frame {
                        Some(f) => encode_close_payload(&mut body, f.code, &f.reason),
                        None => 0,
                    };
                    self.queue_control(OpCode::Close, &body[..n]);
                }
                self.enter_closed();
                self.events.push_back(Event::Close(frame));
            }
            _ => {}
        }
        Ok(())
    }

    /// Fails the connection: stop reading and queue a close frame for `err`
    /// (or, with [`Config::defer_error_close`], remember it for
    /// [`commit_failure`](Self::commit_failure)).
    fn fail(&mut self, now: Instant, err: &ProtocolError) {
        self.rx_done = true;
        self.msg = None;
        self.frame = None;
        if self.config.defer_error_close && !self.error_close_committed && !self.close_sent {
            self.deferred_failure = Some(err.clone());
            return;
        }
        if !self.close_sent {
            self.close_sent = true;
            let mut body = [0u8; MAX_CONTROL_PAYLOAD];
            let n = encode_close_payload(&mut body, err.close_code(), &err.to_string());
            self.queue_control(OpCode::Close, &body[..n]);
        }
        self.enter_closed();
        self.close_deadline = Some(now + self.config.close_timeout);
    }

    fn enter_closed(&mut self) {
        self.state = State::Closed;
        self.next_ping = None;
        self.pong_deadline = None;
        self.close_deadline = None;
        if let Some(i) = self.inflater.take() {
            crate::pool::give_inflater(i);
        }
        self.deflater = None;
    }

    fn peer_no_context_takeover(&self) -> bool {
        self.config.deflate.is_some_and(|p| match self.config.role {
            Role::Server => p.client_no_context_takeover,
            Role::Client => p.server_no_context_takeover,
        })
    }

    /// The protocol error waiting for [`commit_failure`](Self::commit_failure)
    /// (only with [`Config::defer_error_close`]).
    pub fn deferred_failure(&self) -> Option<&ProtocolError> {
        self.deferred_failure.as_ref()
    }

    /// Queues the close frame of a deferred protocol error and enters
    /// [`State::Closed`]. Messages sent between the error and this call go out
    /// before the close frame. A no-op without a deferred error.
    pub fn commit_failure(&mut self, now: Instant) {
        if let Some(err) = self.deferred_failure.take() {
            self.error_close_committed = true;
            self.fail(now, &err);
        }
    }

    /// Returns the next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------- output

    /// Queues a data message. Fails with [`Error::Closed`] once a close frame was
    /// sent.
    pub fn send(&mut self, message: Message) -> Result<(), Error> {
        if self.close_sent {
            return Err(Error::Closed);
        }
        let opcode = message.opcode();
        let payload = match message {
            Message::Text(t) => t.into_bytes(),
            Message::Binary(b) => b,
        };
        if let Some(params) = self.config.deflate {
            if payload.len() >= self.config.compression_min_size {
                if let Some(z) = self.compress(params, &payload) {
                    self.queue_frame(opcode, true, &Bytes::from(z));
                    return Ok(());
                }
            }
        }
        self.queue_frame(opcode, false, &payload);
        Ok(())
    }

    /// Queues a message that was encoded once for many receivers. In the server
    /// role the shared frame itself is queued (no copy); a client, or a server that
    /// uses context takeover for compression, encodes it like [`send`](Self::send).
    pub fn send_prepared(&mut self, prepared: &PreparedMessage) -> Result<(), Error> {
        if self.close_sent {
            return Err(Error::Closed);
        }
        if self.config.role == Role::Client {
            return self.send(prepared.message().clone());
        }
        if let Some(p) = self.config.deflate {
            if !p.server_no_context_takeover {
                return self.send(prepared.message().clone());
            }
            if prepared.message().len() >= self.config.compression_min_size {
                let bits = p.server_max_window_bits;
                if let Some(frame) = prepared.compressed_frame(bits, self.config.compression_level)
                {
                    self.push_out(frame.clone());
                    return Ok(());
                }
            }
        }
        self.push_out(prepared.plain_frame().clone());
        Ok(())
    }

    /// Queues a ping. The payload may be at most 125 bytes.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.check_control(payload)?;
        self.queue_control(OpCode::Ping, payload);
        Ok(())
    }

    /// Queues an unsolicited pong (a one-way heartbeat).
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.check_control(payload)?;
        self.queue_control(OpCode::Pong, payload);
        Ok(())
    }

    fn check_control(&self, payload: &[u8]) -> Result<(), Error> {
        if self.close_sent {
            return Err(Error::Closed);
        }
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(Error::ControlTooLarge(payload.len()));
        }
        Ok(())
    }

    /// Starts the close handshake with `code` and `reason` (cut to 123 bytes at a
    /// character boundary). Calling it again is a no-op. The peer's close frame is
    /// awaited until [`Config::close_timeout`] after `now`.
    pub fn close(&mut self, now: Instant, code: CloseCode, reason: &str) -> Result<(), Error> {
        if !code.is_valid_on_wire() {
            return Err(Error::InvalidCloseCode(code.0));
        }
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        let mut body = [0u8; MAX_CONTROL_PAYLOAD];
        let n = encode_close_payload(&mut body, code, reason);
        self.queue_control(OpCode::Close, &body[..n]);
        if self.state == State::Open {
            self.state = State::CloseSent;
            self.next_ping = None;
            self.pong_deadline = None;
            self.close_deadline = Some(now + self.config.close_timeout);
        }
        Ok(())
    }

    fn compress(&mut self, params: DeflateParams, payload: &[u8]) -> Option<Vec<u8>> {
        let (no_takeover, bits) = match self.config.role {
            Role::Server => (
                params.server_no_context_takeover,
                params.server_max_window_bits,
            ),
            Role::Client => (
                params.client_no_context_takeover,
                params.client_max_window_bits,
            ),
        };
        let level = self.config.compression_level;
        let mut z = Vec::with_capacity(payload.len() / 2 + 16);
        let ok = if no_takeover {
            crate::pool::with_shared_deflater(bits.clamp(9, 15), level, |d| {
                d.compress(payload, &mut z)
            })
            .is_ok()
        } else {
            let d = match self.deflater.as_mut() {
                Some(d) => d,
                None => self.deflater.insert(Box::new(
                    Deflater::new(bits.clamp(9, 15), level, false).ok()?,
                )),
            };
            d.compress(payload, &mut z).is_ok()
        };
        // With context takeover the compressor's history already holds this
        // message, so its output must be sent even when it is not smaller.
        if ok && (z.len() < payload.len() || !no_takeover) {
            Some(z)
        } else {
            None
        }
    }

    fn mask_key(&mut self) -> Option<[u8; 4]> {
        self.rng.as_mut().map(|r| r.u32(..).to_ne_bytes())
    }

    fn queue_control(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = self.mask_key();
        let frame = encode_small(opcode, false, mask, payload);
        self.push_out(frame);
    }

    fn queue_frame(&mut self, opcode: OpCode, rsv1: bool, payload: &Bytes) {
        let mask = self.mask_key();
        if mask.is_some() || payload.len() <= COALESCE_MAX {
            let frame = encode_small(opcode, rsv1, mask, payload);
            self.push_out(frame);
        } else {
            let header = encode_small_header(opcode, rsv1, payload.len());
            self.push_out(header);
            self.push_out(payload.clone());
        }
    }

    fn push_out(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out_len += bytes.len();
            self.out.push_back(bytes);
        }
    }

    /// Bytes queued and not yet written.
    pub fn output_len(&self) -> usize {
        self.out_len
    }

    /// Whether there is output to write.
    pub fn has_output(&self) -> bool {
        self.out_len > 0
    }

    /// Fills `dst` with the queued output, in order, and returns how many slices it
    /// filled. Write them with one vectored write, then call
    /// [`advance_output`](Self::advance_output).
    pub fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(self.out.iter()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes of queued output (they were written).
    pub fn advance_output(&mut self, mut n: usize) {
        n = n.min(self.out_len);
        self.out_len -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        if self.out.is_empty() {
            self.pending_pongs = 0;
            self.out.release(64);
        }
    }

    // ---------------------------------------------------------------- timers

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_ping, self.pong_deadline, self.close_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Stops the heartbeat (no pings, no pong deadline), e.g. while the caller
    /// has stopped reading because its application is not keeping up: pongs
    /// could not be seen, so the peer must not be blamed for missing them.
    pub fn suspend_heartbeat(&mut self) {
        self.next_ping = None;
        self.pong_deadline = None;
    }

    /// Restarts the heartbeat after [`suspend_heartbeat`](Self::suspend_heartbeat):
    /// the next ping goes out one interval after `now`.
    pub fn resume_heartbeat(&mut self, now: Instant) {
        if self.state == State::Open {
            self.next_ping = self.config.ping_interval.map(|i| now + i);
        }
    }

    /// Runs the timers due at `now`: sends a heartbeat ping, or reports that the
    /// peer missed its pong or the close handshake ran out of time (drop the
    /// transport then).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Timeout> {
        if self.close_deadline.is_some_and(|d| d <= now) {
            return Err(Timeout::Close);
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            return Err(Timeout::Pong);
        }
        if let (Some(at), Some(interval)) = (self.next_ping, self.config.ping_interval) {
            if at <= now && !self.close_sent {
                // A heartbeat means the connection may be idle: give back
                // the queues' room from its last burst.
                self.events.release(0);
                self.out.release(0);
                self.queue_control(OpCode::Ping, &[]);
                if self.pong_deadline.is_none() {
                    self.pong_deadline = Some(now + self.config.pong_timeout);
                }
                self.next_ping = Some(now + interval);
            }
        }
        Ok(())
    }
}

fn new_inflater(config: &Config) -> Result<Box<Inflater>, ProtocolError> {
    let no_takeover = config.deflate.is_some_and(|p| match config.role {
        Role::Server => p.client_no_context_takeover,
        Role::Client => p.server_no_context_takeover,
    });
    // A 15-bit window reads streams made with any smaller window.
    if no_takeover {
        crate::pool::take_inflater(15).map_err(|_| ProtocolError::Inflate)
    } else {
        Inflater::new(15, false)
            .map(Box::new)
            .map_err(|_| ProtocolError::Inflate)
    }
}

fn inflate_error(e: DeflateError, max: usize) -> ProtocolError {
    match e {
        DeflateError::TooLarge => ProtocolError::MessageTooLarge { max },
        _ => ProtocolError::Inflate,
    }
}

/// Parses a close frame payload (RFC 6455 §5.5.1).
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [a, b, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*a, *b]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// Writes code + reason (cut to fit 125 bytes) and returns the length.
fn encode_close_payload(
    out: &mut [u8; MAX_CONTROL_PAYLOAD],
    code: CloseCode,
    reason: &str,
) -> usize {
    let f = CloseFrame::new(code, reason);
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    out[2..2 + f.reason.len()].copy_from_slice(f.reason.as_bytes());
    2 + f.reason.len()
}

fn encode_small(opcode: OpCode, rsv1: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Bytes {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = header(opcode, rsv1, mask, payload.len()).encode(&mut hdr);
    arena_frame(n + payload.len(), |buf| {
        buf.extend_from_slice(&hdr[..n]);
        let start = buf.len();
        buf.extend_from_slice(payload);
        if let Some(m) = mask {
            apply_mask(&mut buf[start..], m, 0);
        }
    })
}

fn encode_small_header(opcode: OpCode, rsv1: bool, len: usize) -> Bytes {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = header(opcode, rsv1, None, len).encode(&mut hdr);
    arena_frame(n, |buf| buf.extend_from_slice(&hdr[..n]))
}

fn header(opcode: OpCode, rsv1: bool, mask: Option<[u8; 4]>, len: usize) -> FrameHeader {
    FrameHeader {
        fin: true,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
        payload_len: len as u64,
    }
}

/// Seed for the client's masking keys: from the OS, falling back to the clock.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_ok() {
        u64::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;

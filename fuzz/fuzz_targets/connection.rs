//! Fuzz target for two `wshub_proto::Connection`s talking to each other: a client
//! and a server with fuzz-chosen permessage-deflate parameters (context takeover
//! on or off each way, window bits 9..=15, compression level and threshold).
//!
//! The input is a script read with `arbitrary::Unstructured`: the settings, then
//! up to 96 operations. Either side sends text or binary messages (small, or large
//! and compressible, up to 48 KiB), the server also through `send_prepared`;
//! either side pings, closes (with any code, valid or not), or sends a message by
//! hand in fragments with a ping between them; queued output is moved to the peer
//! in partial vectored writes, fed in chunks of fuzz-chosen sizes. One operation
//! injects raw fuzz bytes into one side's input.
//!
//! Until raw bytes are injected, the exchange is well-formed, and the target
//! asserts it is exact: every message, ping, pong and close frame arrives
//! unchanged and in order, pings are answered, sends after a close fail with
//! `Error::Closed`, no side reports a protocol error, and both states follow the
//! close handshake. After raw bytes it only checks that nothing panics and that
//! every event still respects the limits.
#![no_main]

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Instant;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use wshub_proto::connection::{Config, Connection, Event, Role, State};
use wshub_proto::deflate::DeflateParams;
use wshub_proto::frame::{encode_frame, OpCode, MAX_CONTROL_PAYLOAD};
use wshub_proto::{CloseCode, CloseFrame, Error, Limits, Message, PreparedMessage, ProtocolError};

/// What the peer must see next from one side's output.
#[derive(Debug)]
enum Expect {
    Message(Message),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<CloseFrame>),
}

struct Side {
    name: &'static str,
    conn: Connection,
    /// Frames this side queued that the peer has not decoded yet, in order.
    sent: VecDeque<Expect>,
    /// This side queued a close frame.
    close_sent: bool,
    /// The peer's close frame arrived.
    got_close: bool,
    /// Pongs queued since this side's output was last written out completely.
    pending_pongs: usize,
}

impl Side {
    fn new(name: &'static str, config: Config, now: Instant) -> Side {
        Side {
            name,
            conn: Connection::new(config, now),
            sent: VecDeque::new(),
            close_sent: false,
            got_close: false,
            pending_pongs: 0,
        }
    }

    fn expected_state(&self) -> State {
        match (self.close_sent, self.got_close) {
            (false, _) => State::Open,
            (true, false) => State::CloseSent,
            (true, true) => State::Closed,
        }
    }
}

struct World {
    sides: [Side; 2],
    now: Instant,
    /// Raw bytes were injected: from now on nothing is predicted.
    tainted: bool,
    /// Bytes of generated payload so far (keeps one input cheap).
    budget: usize,
}

const SERVER: usize = 0;
const CLIENT: usize = 1;
const BUDGET: usize = 256 << 10;

fn pair(sides: &mut [Side; 2], from: usize) -> (&mut Side, &mut Side) {
    let [server, client] = sides;
    if from == SERVER {
        (server, client)
    } else {
        (client, server)
    }
}

fn check_event(event: &Event, limits: &Limits) {
    match event {
        Event::Message(m) => {
            assert!(m.len() <= limits.max_message_size);
            if let Message::Text(t) = m {
                assert!(std::str::from_utf8(t.as_bytes()).is_ok(), "text not UTF-8");
            }
        }
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD),
        Event::Close(Some(f)) => {
            assert!(f.code.is_valid_on_wire());
            assert!(f.reason.len() <= CloseFrame::MAX_REASON);
        }
        Event::Close(None) => {}
    }
}

impl World {
    /// Feeds `wire` to the peer of `from` in fuzz-chosen chunks, checks each event
    /// against what `from` sent, and models the peer's automatic replies.
    fn feed(&mut self, u: &mut Unstructured<'_>, from: usize, mut wire: Vec<u8>) -> Result<()> {
        let now = self.now;
        let (tx, rx) = pair(&mut self.sides, from);
        let limits = rx.conn.config().limits;
        let mut rest: &mut [u8] = &mut wire;
        while !rest.is_empty() {
            let n = if u.is_empty() {
                rest.len()
            } else {
                u.int_in_range(1..=rest.len())?
            };
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            let result = rx.conn.handle_input(now, chunk);
            // The one failure a well-formed exchange can see: more pings than
            // `max_pending_pongs` answered while the answers are not written.
            let flood = result == Err(ProtocolError::PingFlood);
            if !self.tainted && !flood {
                assert_eq!(result, Ok(()), "{} rejected well-formed input", rx.name);
            }
            while let Some(event) = rx.conn.poll_event() {
                check_event(&event, &limits);
                if !self.tainted {
                    let expected = tx.sent.pop_front();
                    let matches = match (&event, &expected) {
                        (Event::Message(got), Some(Expect::Message(want))) => got == want,
                        (Event::Ping(got), Some(Expect::Ping(want)))
                        | (Event::Pong(got), Some(Expect::Pong(want))) => got[..] == want[..],
                        (Event::Close(got), Some(Expect::Close(want))) => got == want,
                        _ => false,
                    };
                    assert!(
                        matches,
                        "{} got {event:?}, expected {expected:?} from {}",
                        rx.name, tx.name
                    );
                }
                match event {
                    Event::Ping(p) if !rx.close_sent => {
                        rx.pending_pongs += 1;
                        rx.sent.push_back(Expect::Pong(p.to_vec()));
                    }
                    Event::Close(frame) => {
                        rx.got_close = true;
                        if !rx.close_sent {
                            rx.close_sent = true;
                            rx.sent.push_back(Expect::Close(frame));
                        }
                    }
                    _ => {}
                }
            }
            if flood && !self.tainted {
                assert_eq!(rx.pending_pongs, rx.conn.config().max_pending_pongs);
                assert!(
                    matches!(tx.sent.front(), Some(Expect::Ping(_))),
                    "ping flood reported on {:?}",
                    tx.sent.front()
                );
                self.tainted = true;
            }
            if result.is_err() {
                assert_eq!(rx.conn.state(), State::Closed);
                rx.close_sent = true;
                rx.got_close = true;
            }
        }
        Ok(())
    }

    /// Moves (part of) the output of `from` to its peer.
    fn transfer(&mut self, u: &mut Unstructured<'_>, from: usize, all: bool) -> Result<()> {
        let conn = &mut self.sides[from].conn;
        let queued = conn.output_len();
        if queued == 0 {
            return Ok(());
        }
        let slots = if all { 64 } else { u.int_in_range(1..=8)? };
        let mut iov = vec![IoSlice::new(&[]); slots];
        let n = conn.chunks_vectored(&mut iov);
        assert!(n > 0);
        let bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert!(bytes.len() <= queued);
        let written = if all || u.is_empty() {
            bytes.len()
        } else {
            u.int_in_range(0..=bytes.len())?
        };
        let wire = bytes[..written].to_vec();
        conn.advance_output(written);
        assert_eq!(conn.output_len(), queued - written);
        if !conn.has_output() {
            self.sides[from].pending_pongs = 0;
        }
        self.feed(u, from, wire)
    }

    /// Moves everything queued on both sides until nothing is left.
    fn flush(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        for _ in 0..16 {
            if !self.sides[SERVER].conn.has_output() && !self.sides[CLIENT].conn.has_output() {
                return Ok(());
            }
            for from in [SERVER, CLIENT] {
                while self.sides[from].conn.has_output() {
                    self.transfer(u, from, true)?;
                }
            }
        }
        panic!("output never settled");
    }

    fn send(&mut self, from: usize, message: Message, prepared: bool) {
        let side = &mut self.sides[from];
        let result = if prepared {
            side.conn.send_prepared(&PreparedMessage::new(&message))
        } else {
            side.conn.send(message.clone())
        };
        if self.tainted {
            return;
        }
        if side.close_sent {
            assert_eq!(result, Err(Error::Closed), "{} sent after close", side.name);
        } else {
            assert_eq!(result, Ok(()));
            side.sent.push_back(Expect::Message(message));
        }
    }

    fn message(&mut self, u: &mut Unstructured<'_>) -> Result<Message> {
        let text = u.arbitrary::<bool>()?;
        let large = u.ratio(1, 16)?;
        let message = if large {
            let len = u.int_in_range(0..=48 * 1024)?;
            if text {
                let unit: &str = u.arbitrary()?;
                let unit = if unit.is_empty() { "é" } else { unit };
                Message::from(unit.repeat(len / unit.len()))
            } else {
                let n = u.int_in_range(1..=16)?;
                let unit = u.bytes(n)?;
                let unit = if unit.is_empty() { &[0u8][..] } else { unit };
                Message::from(unit.repeat(len / unit.len()))
            }
        } else if text {
            Message::from(u.arbitrary::<String>()?)
        } else {
            Message::from(u.arbitrary::<Vec<u8>>()?)
        };
        self.budget += message.len();
        Ok(message)
    }

    /// Sends a message by hand in fragments (uncompressed), with a ping between
    /// two of them.
    fn send_fragments(&mut self, u: &mut Unstructured<'_>, from: usize) -> Result<()> {
        if self.sides[from].close_sent || self.tainted {
            return Ok(());
        }
        // What is queued goes first.
        while self.sides[from].conn.has_output() {
            self.transfer(u, from, true)?;
        }
        if self.tainted || self.sides[from].close_sent {
            return Ok(());
        }
        let message = self.message(u)?;
        let payload = message.payload().to_vec();
        let pieces = u.int_in_range(1..=6)?;
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| u.int_in_range(0..=payload.len()))
            .collect::<Result<_>>()?;
        cuts.push(0);
        cuts.push(payload.len());
        cuts.sort_unstable();
        let ping_after = u.int_in_range(0..=pieces)?;
        let n = u.int_in_range(0..=MAX_CONTROL_PAYLOAD)?;
        let ping: Vec<u8> = u.bytes(n)?.to_vec();
        let mask = |u: &mut Unstructured<'_>| -> Result<Option<[u8; 4]>> {
            Ok((from == CLIENT).then_some(u.arbitrary()?))
        };
        let mut wire = Vec::new();
        for (i, w) in cuts.windows(2).enumerate() {
            if i == ping_after {
                encode_frame(&mut wire, OpCode::Ping, true, false, mask(u)?, &ping);
                self.sides[from].sent.push_back(Expect::Ping(ping.clone()));
            }
            let opcode = if i > 0 {
                OpCode::Continuation
            } else {
                message.opcode()
            };
            let fin = i + 2 == cuts.len();
            let key = mask(u)?;
            encode_frame(&mut wire, opcode, fin, false, key, &payload[w[0]..w[1]]);
        }
        self.sides[from].sent.push_back(Expect::Message(message));
        self.feed(u, from, wire)
    }

    fn op(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let side = usize::from(u.arbitrary::<bool>()?);
        match u.int_in_range(0..=9)? {
            0 | 1 => {
                let message = self.message(u)?;
                let prepared = side == SERVER && u.arbitrary()?;
                self.send(side, message, prepared);
            }
            2 => {
                let len = u.int_in_range(0..=MAX_CONTROL_PAYLOAD + 3)?;
                let payload = u.bytes(len)?.to_vec();
                let s = &mut self.sides[side];
                let result = s.conn.ping(&payload);
                if !self.tainted {
                    if s.close_sent {
                        assert_eq!(result, Err(Error::Closed));
                    } else if payload.len() > MAX_CONTROL_PAYLOAD {
                        assert_eq!(result, Err(Error::ControlTooLarge(payload.len())));
                    } else {
                        assert_eq!(result, Ok(()));
                        s.sent.push_back(Expect::Ping(payload));
                    }
                }
            }
            3 => {
                let code = match u.int_in_range(0..=3)? {
                    0 => CloseCode::NORMAL,
                    1 => CloseCode::GOING_AWAY,
                    2 => CloseCode(u.int_in_range(3000..=4999)?),
                    _ => CloseCode(u.arbitrary()?),
                };
                let reason: String = u.arbitrary()?;
                let now = self.now;
                let s = &mut self.sides[side];
                let result = s.conn.close(now, code, &reason);
                if !self.tainted {
                    if !code.is_valid_on_wire() {
                        assert_eq!(result, Err(Error::InvalidCloseCode(code.0)));
                    } else {
                        assert_eq!(result, Ok(()));
                        if !s.close_sent {
                            s.close_sent = true;
                            s.sent
                                .push_back(Expect::Close(Some(CloseFrame::new(code, &reason))));
                        }
                    }
                }
            }
            4..=6 => self.transfer(u, side, false)?,
            7 => self.send_fragments(u, side)?,
            8 => self.flush(u)?,
            _ => {
                // Raw bytes: the exchange is no longer predictable.
                let n = u.int_in_range(0..=u.len())?;
                let bytes = u.bytes(n)?.to_vec();
                if !bytes.is_empty() {
                    self.tainted = true;
                    self.feed(u, 1 - side, bytes)?;
                }
            }
        }
        if !self.tainted {
            for s in &self.sides {
                assert_eq!(s.conn.state(), s.expected_state(), "{} state", s.name);
            }
        }
        Ok(())
    }
}

fn settings(u: &mut Unstructured<'_>) -> Result<(DeflateParams, u32, usize)> {
    let params = DeflateParams {
        server_no_context_takeover: u.arbitrary()?,
        client_no_context_takeover: u.arbitrary()?,
        server_max_window_bits: u.int_in_range(9..=15)?,
        client_max_window_bits: u.int_in_range(9..=15)?,
    };
    Ok((params, u.int_in_range(0..=9)?, u.int_in_range(0..=128)?))
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let (params, level, min_size) = settings(&mut u)?;
    let now = Instant::now();
    let config = |role| {
        Config::new(role)
            .with_deflate(Some(params))
            .with_compression(level, min_size)
            .with_heartbeat(None, std::time::Duration::from_secs(10))
    };
    let mut world = World {
        sides: [
            Side::new("server", config(Role::Server), now),
            Side::new("client", config(Role::Client), now),
        ],
        now,
        tainted: false,
        budget: 0,
    };
    for _ in 0..96 {
        // An operation that runs out of input ends the script (before any effect).
        if u.is_empty() || world.budget > BUDGET || world.op(&mut u).is_err() {
            break;
        }
    }
    // Deliver everything that is still queued (the script may have run out).
    let mut rest = Unstructured::new(&[]);
    world.flush(&mut rest)?;
    if !world.tainted {
        for s in &world.sides {
            assert!(
                s.sent.is_empty(),
                "{} frames never arrived: {:?}",
                s.name,
                s.sent
            );
            assert_eq!(s.conn.state(), s.expected_state(), "{} final state", s.name);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

//! Fuzz target for the frame decoder: `FrameHeader::parse` and the receive path of
//! `wshub_proto::Connection` in both roles.
//!
//! Input layout: byte 0 picks the settings (how many chunk-size bytes follow,
//! permessage-deflate on or off with its context-takeover flags, and one of four
//! limit presets); the next 1..=8 bytes are the sizes (1..=256) of the reads the
//! stream is cut into, cycled; the rest is the byte stream itself.
//!
//! The stream goes to a server `Connection` and to a client `Connection`, each
//! once whole and once in the chosen chunks, events drained after every read and
//! output drained in uneven pieces. Beyond "never panic" it checks:
//! - `FrameHeader::parse` never claims more than it was given (2..=14 bytes), is
//!   incremental (every shorter prefix is `Ok(None)`), and re-encodes to a header
//!   that parses back the same;
//! - the decoder is streaming: chunked input gives exactly the events, the result
//!   and (server role) the output bytes of the whole input;
//! - every event respects the limits (message size, UTF-8 of text, control
//!   payloads of at most 125 bytes, wire-valid close codes);
//! - after an error the connection is `Closed` and ignores further input;
//! - `output_len` matches the queued bytes, and everything the connection writes
//!   (pongs, close replies, close frames for errors) decodes without error at a
//!   fresh peer of the opposite role.
#![no_main]

use std::io::IoSlice;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wshub_proto::connection::{Config, Connection, Event, Role, State};
use wshub_proto::deflate::DeflateParams;
use wshub_proto::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use wshub_proto::{Limits, Message, ProtocolError};

fn limits_preset(n: u8) -> Limits {
    match n & 3 {
        0 => Limits::default(),
        1 => Limits::default()
            .with_max_message_size(64)
            .with_max_frame_size(32),
        2 => Limits::default()
            .with_max_message_size(300)
            .with_max_fragments(3),
        _ => Limits::default()
            .with_max_message_size(4096)
            .with_max_frame_size(1 << 20)
            .with_max_fragments(8),
    }
}

fn config(role: Role, control: u8) -> Config {
    let deflate = (control & 0x08 != 0).then_some(DeflateParams {
        server_no_context_takeover: control & 0x10 != 0,
        client_no_context_takeover: control & 0x20 != 0,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    });
    Config::new(role)
        .with_limits(limits_preset(control >> 6))
        .with_deflate(deflate)
}

fn check_header(data: &[u8]) {
    let Ok(Some((h, n))) = FrameHeader::parse(data) else {
        return;
    };
    assert!((2..=MAX_HEADER_LEN).contains(&n) && n <= data.len());
    for k in 0..n {
        assert_eq!(
            FrameHeader::parse(&data[..k]),
            Ok(None),
            "prefix {k} of {n}"
        );
    }
    let mut buf = [0u8; MAX_HEADER_LEN];
    let m = h.encode(&mut buf);
    assert!(m <= n, "re-encoding grew the header: {m} > {n}");
    assert_eq!(FrameHeader::parse(&buf[..m]), Ok(Some((h, m))));
}

/// Every event must respect the limits the connection was built with.
fn check_event(event: &Event, limits: &Limits) {
    match event {
        Event::Message(m) => {
            assert!(m.len() <= limits.max_message_size, "message over the limit");
            if let Message::Text(t) = m {
                assert!(std::str::from_utf8(t.as_bytes()).is_ok(), "text not UTF-8");
            }
        }
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD),
        Event::Close(Some(f)) => {
            assert!(f.code.is_valid_on_wire(), "close code {}", f.code.0);
            assert!(2 + f.reason.len() <= MAX_CONTROL_PAYLOAD);
        }
        Event::Close(None) => {}
    }
}

/// Takes all queued output, in pieces of uneven size, checking `output_len`.
fn take_output(conn: &mut Connection, piece: usize) -> Vec<u8> {
    let mut all = Vec::new();
    while conn.has_output() {
        let queued = conn.output_len();
        let mut iov = [IoSlice::new(&[]); 3];
        let n = conn.chunks_vectored(&mut iov);
        assert!(n > 0, "has_output but no slices");
        let bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert!(bytes.len() <= queued);
        let written = bytes.len().min(piece.max(1));
        all.extend_from_slice(&bytes[..written]);
        conn.advance_output(written);
        assert_eq!(conn.output_len(), queued - written);
    }
    all
}

struct Run {
    events: Vec<Event>,
    error: Option<ProtocolError>,
    output: Vec<u8>,
    state: State,
}

/// Feeds `stream` cut at `sizes` (or whole if `sizes` is empty).
fn run(role: Role, control: u8, stream: &[u8], sizes: &[usize], drain_output: bool) -> Run {
    let config = config(role, control);
    let limits = config.limits;
    let now = Instant::now();
    let mut conn = Connection::new(config, now);
    let mut buf = stream.to_vec();
    let mut events = Vec::new();
    let mut error = None;
    let mut output = Vec::new();
    let mut rest: &mut [u8] = &mut buf;
    let mut i = 0;
    while !rest.is_empty() {
        let n = match sizes {
            [] => rest.len(),
            _ => sizes[i % sizes.len()].min(rest.len()),
        };
        i += 1;
        let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        let result = conn.handle_input(now, chunk);
        while let Some(e) = conn.poll_event() {
            check_event(&e, &limits);
            events.push(e);
        }
        if let Err(e) = result {
            assert_eq!(conn.state(), State::Closed);
            error = Some(e);
            // Input after a failure is ignored.
            let mut more = rest.to_vec();
            more.extend_from_slice(b"\x89\x80\0\0\0\0\x81\x00");
            assert_eq!(conn.handle_input(now, &mut more), Ok(()));
            assert_eq!(conn.poll_event(), None);
            break;
        }
        if let Some(Event::Close(_)) = events.last() {
            assert_eq!(conn.state(), State::Closed);
        }
        if drain_output {
            output.extend(take_output(&mut conn, n * 7 + 1));
        }
    }
    output.extend(take_output(&mut conn, usize::MAX));
    // Timers never panic, whatever state the input left.
    for secs in [1, 6, 11, 26, 40] {
        let _ = conn.poll_timeout();
        if conn
            .handle_timeout(now + Duration::from_secs(secs))
            .is_err()
        {
            break;
        }
    }
    Run {
        events,
        error,
        output,
        state: conn.state(),
    }
}

/// What a connection writes must be readable by its peer.
fn check_output_decodes(role: Role, control: u8, output: &[u8]) {
    let peer_role = match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let config = config(peer_role, control).with_limits(Limits::default());
    let mut peer = Connection::new(config, Instant::now());
    let mut bytes = output.to_vec();
    let result = peer.handle_input(Instant::now(), &mut bytes);
    assert_eq!(result, Ok(()), "own output rejected by the peer");
    while let Some(e) = peer.poll_event() {
        assert!(
            matches!(e, Event::Pong(_) | Event::Close(_)),
            "unexpected event from own output: {e:?}"
        );
    }
}

/// Whether two runs failed the same way. This is exact: a message that is
/// faulty in several ways (bad UTF-8, corrupt deflate data, over the size cap)
/// must fail with the same error however the reads split it, because the error
/// decides the close code. Reproducers of two past divergences are kept in
/// `regressions/frame-*`.
fn same_failure(a: &Option<ProtocolError>, b: &Option<ProtocolError>) -> bool {
    a == b
}

fuzz_target!(|data: &[u8]| {
    check_header(data);
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(control & 0x07) + 1;
    if rest.len() < k {
        return;
    }
    let (size_bytes, stream) = rest.split_at(k);
    let sizes: Vec<usize> = size_bytes.iter().map(|&b| usize::from(b) + 1).collect();
    check_header(stream);

    for role in [Role::Server, Role::Client] {
        let whole = run(role, control, stream, &[], false);
        let chunked = run(role, control, stream, &sizes, false);
        assert_eq!(
            whole.events, chunked.events,
            "{role:?}: events differ by chunking"
        );
        assert!(
            same_failure(&whole.error, &chunked.error),
            "{role:?}: result differs by chunking: {:?} vs {:?}",
            whole.error,
            chunked.error
        );
        assert_eq!(whole.state, chunked.state);
        if role == Role::Server && whole.error == chunked.error {
            // The server does not mask, so its output is deterministic.
            assert_eq!(whole.output, chunked.output, "output differs by chunking");
        }
        // Writing the output between reads only resets the count of unanswered
        // pings, so it changes nothing unless the whole run was a ping flood.
        let drained = run(role, control, stream, &sizes, true);
        if whole.error == Some(ProtocolError::PingFlood) {
            assert!(drained.events.starts_with(&whole.events));
        } else {
            assert_eq!(
                whole.events, drained.events,
                "{role:?}: events differ by draining"
            );
            assert!(
                same_failure(&whole.error, &drained.error),
                "{role:?}: result differs by draining: {:?} vs {:?}",
                whole.error,
                drained.error
            );
        }
        check_output_decodes(role, control, &whole.output);
        check_output_decodes(role, control, &drained.output);
    }
});

//! Deterministic tests of [`Connection`]: byte streams fed whole, byte by byte and
//! in random splits; every protocol rule mapped to its close code; heartbeat and
//! close timers driven by explicit instants.

use super::*;
use crate::frame::encode_frame;
use proptest::prelude::*;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn server() -> Connection {
    Connection::new(Config::new(Role::Server), Instant::now())
}

fn server_with(limits: Limits) -> Connection {
    Connection::new(
        Config::new(Role::Server).with_limits(limits),
        Instant::now(),
    )
}

/// A masked client frame.
fn cframe(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(
        &mut v,
        OpCode::from_u8(op).unwrap(),
        fin,
        false,
        Some(KEY),
        payload,
    );
    v
}

fn raw_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![b0];
    assert!(payload.len() < 126);
    v.push(0x80 | payload.len() as u8);
    v.extend_from_slice(&KEY);
    let start = v.len();
    v.extend_from_slice(payload);
    apply_mask(&mut v[start..], KEY, 0);
    v
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn output(c: &mut Connection) -> Vec<u8> {
    let mut iov = vec![IoSlice::new(&[]); 1024];
    let n = c.chunks_vectored(&mut iov);
    let bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
    c.advance_output(bytes.len());
    bytes
}

/// Decodes the server's output with a client connection.
fn decode_as_client(bytes: &[u8]) -> Vec<Event> {
    let mut c = Connection::new(Config::new(Role::Client), Instant::now());
    let mut b = bytes.to_vec();
    let _ = c.handle_input(Instant::now(), &mut b);
    events(&mut c)
}

fn feed_split(c: &mut Connection, stream: &[u8], splits: &[usize]) -> Result<(), ProtocolError> {
    let mut data = stream.to_vec();
    let mut start = 0;
    let now = Instant::now();
    for &s in splits {
        let s = s.clamp(start, data.len());
        c.handle_input(now, &mut data[start..s])?;
        start = s;
    }
    c.handle_input(now, &mut data[start..])
}

fn expect_failure(stream: &[u8], err: ProtocolError, code: u16) {
    for split in [None, Some(1usize)] {
        let mut c = server();
        let mut data = stream.to_vec();
        let res = match split {
            None => c.handle_input(Instant::now(), &mut data),
            Some(_) => data
                .chunks_mut(1)
                .try_for_each(|b| c.handle_input(Instant::now(), b)),
        };
        assert_eq!(res, Err(err.clone()));
        assert_eq!(c.state(), State::Closed);
        let out = output(&mut c);
        let ev = decode_as_client(&out);
        match ev.last() {
            Some(Event::Close(Some(f))) => assert_eq!(f.code.0, code, "{err:?}"),
            other => panic!("expected a close frame for {err:?}, got {other:?}"),
        }
    }
}

#[test]
fn text_and_binary_messages() {
    let mut stream = cframe(1, true, "héllo".as_bytes());
    stream.extend(cframe(2, true, &[0, 1, 2, 255]));
    stream.extend(cframe(1, true, b""));
    let mut c = server();
    c.handle_input(Instant::now(), &mut stream).unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            Event::Message(Message::from("héllo")),
            Event::Message(Message::Binary(Bytes::from_static(&[0, 1, 2, 255]))),
            Event::Message(Message::from("")),
        ]
    );
}

#[test]
fn fragmented_with_interleaved_ping() {
    let mut stream = cframe(1, false, b"frag");
    stream.extend(cframe(9, true, b"p"));
    stream.extend(cframe(0, false, b"men"));
    stream.extend(cframe(0, false, b""));
    stream.extend(cframe(0, true, b"ted"));
    let mut c = server();
    c.handle_input(Instant::now(), &mut stream).unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            Event::Ping(Bytes::from_static(b"p")),
            Event::Message(Message::from("fragmented")),
        ]
    );
    assert_eq!(
        decode_as_client(&output(&mut c)),
        vec![Event::Pong(Bytes::from_static(b"p"))]
    );
}

#[test]
fn sixteen_and_sixty_four_bit_lengths() {
    for len in [125usize, 126, 65535, 65536, 200_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut stream = cframe(2, true, &payload);
        let mut c = server();
        c.handle_input(Instant::now(), &mut stream).unwrap();
        assert_eq!(
            events(&mut c),
            vec![Event::Message(Message::Binary(payload.into()))]
        );
    }
}

#[test]
fn protocol_violations_map_to_close_codes() {
    // Reserved bits.
    expect_failure(
        &raw_frame(0x81 | 0x20, b"x"),
        ProtocolError::ReservedBits,
        1002,
    );
    expect_failure(
        &raw_frame(0x81 | 0x10, b"x"),
        ProtocolError::ReservedBits,
        1002,
    );
    // RSV1 without permessage-deflate.
    expect_failure(
        &raw_frame(0x81 | 0x40, b"x"),
        ProtocolError::ReservedBits,
        1002,
    );
    // Reserved opcodes.
    expect_failure(&raw_frame(0x83, b""), ProtocolError::UnknownOpcode(3), 1002);
    expect_failure(
        &raw_frame(0x8b, b""),
        ProtocolError::UnknownOpcode(0xb),
        1002,
    );
    // Fragmented control frame.
    expect_failure(
        &raw_frame(0x09, b""),
        ProtocolError::FragmentedControl,
        1002,
    );
    // Control frame over 125 bytes.
    let mut big_ping = Vec::new();
    encode_frame(
        &mut big_ping,
        OpCode::Ping,
        true,
        false,
        Some(KEY),
        &[0; 126],
    );
    expect_failure(&big_ping, ProtocolError::ControlTooLarge(126), 1002);
    // Unmasked client frame.
    expect_failure(&[0x81, 0x01, b'x'], ProtocolError::UnmaskedFrame, 1002);
    // Continuation without a message; new message inside a fragmented one.
    expect_failure(
        &cframe(0, true, b"x"),
        ProtocolError::UnexpectedContinuation,
        1002,
    );
    let mut s = cframe(1, false, b"a");
    s.extend(cframe(1, true, b"b"));
    expect_failure(&s, ProtocolError::ExpectedContinuation, 1002);
    // Invalid UTF-8 in text, and in a close reason.
    expect_failure(
        &cframe(1, true, &[0xce, 0xba, 0xff]),
        ProtocolError::InvalidUtf8,
        1007,
    );
    expect_failure(
        &cframe(8, true, &[0x03, 0xe8, 0xff]),
        ProtocolError::InvalidUtf8,
        1007,
    );
    // Close payload of one byte; invalid close codes.
    expect_failure(
        &cframe(8, true, &[0x03]),
        ProtocolError::InvalidClosePayload,
        1002,
    );
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        expect_failure(
            &cframe(8, true, &code.to_be_bytes()),
            ProtocolError::InvalidCloseCode(code),
            1002,
        );
    }
}

#[test]
fn text_fails_fast_mid_frame() {
    // The bad byte arrives while most of the frame is still missing: the error is
    // reported on that read, not when the frame completes.
    let mut payload = "κόσμε".as_bytes().to_vec();
    payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
    payload.extend_from_slice(&[b'a'; 1000]);
    let mut stream = cframe(1, true, &payload);
    let mut c = server();
    let cut = 8 + 10 + 2; // header (16-bit length, mask) + "κόσμε" + 2 bad bytes
    assert_eq!(
        c.handle_input(Instant::now(), &mut stream[..cut]),
        Err(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn deferred_error_close_lets_earlier_messages_be_answered() {
    // Autobahn 3.2: a valid message and a bad frame in one segment; the echo of
    // the valid message must precede the close frame.
    let t0 = Instant::now();
    let cfg = Config::new(Role::Server).with_deferred_error_close(true);
    let mut c = Connection::new(cfg, t0);
    let mut stream = cframe(1, true, b"hello");
    stream.extend(raw_frame(0x81 | 0x20, b"x"));
    stream.extend(cframe(1, true, b"ignored"));
    assert_eq!(
        c.handle_input(t0, &mut stream),
        Err(ProtocolError::ReservedBits)
    );
    assert_eq!(c.state(), State::Open);
    assert_eq!(c.deferred_failure(), Some(&ProtocolError::ReservedBits));
    assert_eq!(events(&mut c), vec![Event::Message(Message::from("hello"))]);
    c.send(Message::from("hello")).unwrap();
    c.commit_failure(t0);
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.deferred_failure(), None);
    assert_eq!(c.send(Message::from("late")), Err(Error::Closed));
    let ev = decode_as_client(&output(&mut c));
    assert_eq!(ev[0], Event::Message(Message::from("hello")));
    assert!(matches!(&ev[1], Event::Close(Some(f)) if f.code.0 == 1002));
    assert_eq!(ev.len(), 2);
    // Without deferral the close frame is queued at once.
    let mut c = server();
    let mut stream = cframe(1, true, b"hello");
    stream.extend(raw_frame(0x81 | 0x20, b"x"));
    let _ = c.handle_input(t0, &mut stream);
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn limits_map_to_close_codes() {
    let limits = Limits::default()
        .with_max_frame_size(100)
        .with_max_message_size(150)
        .with_max_fragments(3);
    let mk = || server_with(limits);
    let check = |stream: &[u8], err: ProtocolError, code: u16| {
        let mut c = mk();
        let mut data = stream.to_vec();
        assert_eq!(c.handle_input(Instant::now(), &mut data), Err(err));
        let ev = decode_as_client(&output(&mut c));
        assert!(matches!(ev.last(), Some(Event::Close(Some(f))) if f.code.0 == code));
    };
    check(
        &cframe(2, true, &[0; 101]),
        ProtocolError::FrameTooLarge {
            size: 101,
            max: 100,
        },
        1009,
    );
    let mut s = cframe(2, false, &[0; 100]);
    s.extend(cframe(0, true, &[0; 51]));
    check(&s, ProtocolError::MessageTooLarge { max: 150 }, 1009);
    let mut s = cframe(2, false, b"");
    for _ in 0..3 {
        s.extend(cframe(0, false, b""));
    }
    check(&s, ProtocolError::TooManyFragments { max: 3 }, 1008);
    // A 2^62-byte frame header alone is rejected without buffering anything.
    let mut h = vec![0x82, 0xff];
    h.extend_from_slice(&(1u64 << 62).to_be_bytes());
    h.extend_from_slice(&KEY);
    check(
        &h,
        ProtocolError::FrameTooLarge {
            size: 1 << 62,
            max: 100,
        },
        1009,
    );
}

#[test]
fn peer_close_is_echoed_and_input_after_is_ignored() {
    let mut stream = cframe(8, true, &[0x0f, 0xa0, b'b', b'y', b'e']); // 4000 "bye"
    stream.extend(cframe(1, true, b"late"));
    let mut c = server();
    c.handle_input(Instant::now(), &mut stream).unwrap();
    let f = CloseFrame::new(CloseCode(4000), "bye");
    assert_eq!(events(&mut c), vec![Event::Close(Some(f.clone()))]);
    assert_eq!(c.state(), State::Closed);
    assert_eq!(
        decode_as_client(&output(&mut c)),
        vec![Event::Close(Some(f))]
    );
    assert_eq!(c.send(Message::from("x")), Err(Error::Closed));
}

#[test]
fn empty_close_is_answered_with_empty_close() {
    let mut c = server();
    c.handle_input(Instant::now(), &mut cframe(8, true, b""))
        .unwrap();
    assert_eq!(events(&mut c), vec![Event::Close(None)]);
    assert_eq!(output(&mut c), vec![0x88, 0x00]);
}

#[test]
fn local_close_waits_for_peer_then_times_out() {
    let t0 = Instant::now();
    let mut c = Connection::new(Config::new(Role::Server), t0);
    c.close(t0, CloseCode::GOING_AWAY, "shutdown").unwrap();
    assert_eq!(c.state(), State::CloseSent);
    assert_eq!(c.send(Message::from("x")), Err(Error::Closed));
    assert_eq!(
        c.close(t0, CloseCode(1005), ""),
        Err(Error::InvalidCloseCode(1005))
    );
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(
        c.handle_timeout(t0 + Duration::from_secs(5)),
        Err(Timeout::Close)
    );
    // The peer's reply completes the handshake.
    let mut c = Connection::new(Config::new(Role::Server), t0);
    c.close(t0, CloseCode::NORMAL, "").unwrap();
    c.handle_input(t0, &mut cframe(8, true, &[0x03, 0xe8]))
        .unwrap();
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.poll_timeout(), None);
    let out = output(&mut c);
    assert_eq!(out, vec![0x88, 0x02, 0x03, 0xe8]); // only our one close frame
}

#[test]
fn heartbeat_pings_and_times_out() {
    let t0 = Instant::now();
    let cfg = Config::new(Role::Server)
        .with_heartbeat(Some(Duration::from_secs(30)), Duration::from_secs(10));
    let mut c = Connection::new(cfg.clone(), t0);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    c.handle_timeout(t0 + Duration::from_secs(29)).unwrap();
    assert!(!c.has_output());
    c.handle_timeout(t0 + Duration::from_secs(30)).unwrap();
    assert_eq!(output(&mut c), vec![0x89, 0x00]);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(40)));
    // A pong clears the deadline.
    c.handle_input(t0, &mut cframe(10, true, b"")).unwrap();
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    c.handle_timeout(t0 + Duration::from_secs(60)).unwrap();
    let _ = output(&mut c);
    // No pong this time.
    assert_eq!(
        c.handle_timeout(t0 + Duration::from_secs(70)),
        Err(Timeout::Pong)
    );
    // Disabled heartbeat has no timer.
    let c = Connection::new(cfg.with_heartbeat(None, Duration::from_secs(1)), t0);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn ping_flood_is_policy_violation() {
    let mut stream = Vec::new();
    for _ in 0..17 {
        stream.extend(cframe(9, true, b""));
    }
    expect_failure(&stream, ProtocolError::PingFlood, 1008);
    // Ten pings read together all get their pongs (Autobahn 2.10).
    let mut stream = Vec::new();
    for i in 0..10u8 {
        stream.extend(cframe(9, true, &[i]));
    }
    let mut c = server();
    c.handle_input(Instant::now(), &mut stream).unwrap();
    let pongs = decode_as_client(&output(&mut c));
    assert_eq!(pongs.len(), 10);
}

#[test]
fn client_masks_and_server_reads() {
    let now = Instant::now();
    let mut client = Connection::new(Config::new(Role::Client), now);
    let mut srv = server();
    let big: Vec<u8> = (0..5000).map(|i| (i % 251) as u8).collect();
    client.send(Message::from("hello")).unwrap();
    client.send(Message::Binary(big.clone().into())).unwrap();
    client.ping(b"hb").unwrap();
    let mut wire = output(&mut client);
    assert_ne!(wire[1] & 0x80, 0, "client frames are masked");
    srv.handle_input(now, &mut wire).unwrap();
    assert_eq!(
        events(&mut srv),
        vec![
            Event::Message(Message::from("hello")),
            Event::Message(Message::Binary(big.into())),
            Event::Ping(Bytes::from_static(b"hb")),
        ]
    );
    // A masked frame from a server is rejected by the client.
    let mut c = Connection::new(Config::new(Role::Client), now);
    assert_eq!(
        c.handle_input(now, &mut cframe(1, true, b"x")),
        Err(ProtocolError::MaskedFrame)
    );
}

#[test]
fn prepared_message_is_shared() {
    let p = PreparedMessage::new(&Message::from("broadcast"));
    let mut a = server();
    let mut b = server();
    a.send_prepared(&p).unwrap();
    b.send_prepared(&p).unwrap();
    let mut iov = [IoSlice::new(&[]); 4];
    assert_eq!(a.chunks_vectored(&mut iov), 1);
    assert_eq!(
        iov[0].as_ptr(),
        p.plain_frame().as_ptr(),
        "no copy per receiver"
    );
    assert_eq!(
        decode_as_client(&output(&mut b)),
        vec![Event::Message(Message::from("broadcast"))]
    );
}

#[test]
fn vectored_output_and_partial_advance() {
    let mut c = server();
    let big = Bytes::from(vec![7u8; 4000]);
    c.send(Message::from("a")).unwrap();
    c.send(Message::Binary(big.clone())).unwrap();
    let total = c.output_len();
    assert_eq!(total, 3 + 4 + 4000);
    c.advance_output(5);
    assert_eq!(c.output_len(), total - 5);
    let rest = output(&mut c);
    assert_eq!(rest.len(), total - 5);
    assert!(!c.has_output());
}

/// Builds a random client stream of messages (fragmented at random, with pings
/// interleaved) and the messages it should decode to.
fn arb_stream() -> impl Strategy<Value = (Vec<u8>, Vec<Message>)> {
    let msg = prop_oneof![
        "\\PC{0,64}".prop_map(Message::from),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Message::from),
    ];
    proptest::collection::vec((msg, 1usize..4, any::<bool>()), 0..8).prop_map(|msgs| {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (m, parts, ping) in msgs {
            let payload = m.payload().clone();
            let n = payload.len();
            let mut start = 0;
            for i in 0..parts {
                let end = if i + 1 == parts {
                    n
                } else {
                    (n * (i + 1)) / parts
                };
                let op = if i == 0 { m.opcode() as u8 } else { 0 };
                stream.extend(cframe(op, i + 1 == parts, &payload[start..end]));
                if ping && i == 0 {
                    stream.extend(cframe(9, true, b"ping"));
                }
                start = end;
            }
            expected.push(m);
        }
        (stream, expected)
    })
}

proptest! {
    #[test]
    fn any_chunking_decodes_the_same((stream, expected) in arb_stream(),
                                     splits in proptest::collection::vec(0usize..4000, 0..10)) {
        let mut splits = splits;
        splits.sort_unstable();
        for splits in [vec![], splits, (1..stream.len()).collect::<Vec<_>>()] {
            let mut c = server();
            feed_split(&mut c, &stream, &splits).unwrap();
            let got: Vec<Message> = events(&mut c)
                .into_iter()
                .filter_map(|e| match e { Event::Message(m) => Some(m), _ => None })
                .collect();
            prop_assert_eq!(&got, &expected);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512),
                                   splits in proptest::collection::vec(0usize..512, 0..6)) {
        let mut splits = splits;
        splits.sort_unstable();
        for role in [Role::Server, Role::Client] {
            let mut c = Connection::new(Config::new(role), Instant::now());
            let _ = feed_split(&mut c, &data, &splits);
            let _ = events(&mut c);
            let _ = output(&mut c);
        }
    }

    #[test]
    fn round_trip_client_to_server(msgs in proptest::collection::vec(
        prop_oneof!["\\PC{0,100}".prop_map(Message::from),
                    proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Message::from)], 0..6)) {
        let now = Instant::now();
        let mut client = Connection::new(Config::new(Role::Client), now);
        let mut srv = server();
        for m in &msgs {
            client.send(m.clone()).unwrap();
        }
        let mut wire = output(&mut client);
        srv.handle_input(now, &mut wire).unwrap();
        let got: Vec<Message> = events(&mut srv)
            .into_iter()
            .filter_map(|e| match e { Event::Message(m) => Some(m), _ => None })
            .collect();
        prop_assert_eq!(got, msgs);
    }
}

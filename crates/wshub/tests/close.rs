//! The close handshake and abnormal ends over real sockets: a client close
//! (1000, 4000 + reason, no status → 1005) as seen by the server handler
//! (`Disconnect::Closed { by_peer: true, .. }`, `recv` → `None`); a server close
//! (`ws.close(4001, "x")`) after queued messages, as seen by the client; invalid
//! close codes refused by the API (`SendError::InvalidCloseCode`) and on the
//! wire (1002); protocol violations from a raw client (unmasked frame, reserved
//! bits, invalid UTF-8, oversized message) answered with the right close code
//! and then EOF; `terminate()` dropping the connection without a close frame;
//! the last handle going away closing with 1000; and a panicking handler.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{closed, op, recv_until_end, RawClient, TestServer};
use wshub::proto::ProtocolError;
use wshub::{CloseCode, Config, Disconnect, SendError};

#[tokio::test]
async fn client_close_1000_is_seen_by_the_server_handler() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ts = TestServer::start(Config::default(), move |mut ws| {
        let tx = tx.clone();
        async move {
            let mut got = Vec::new();
            while let Some(m) = ws.recv().await {
                got.push(m);
            }
            // recv returned None: the connection has ended, and says why.
            let _ = tx.send((got, ws.disconnect(), ws.is_open()));
        }
    })
    .await;
    let client = common::connect(&ts.url("/")).await;
    client.send("last words").unwrap();
    client.close(CloseCode::NORMAL, "").unwrap();
    assert_eq!(client.send("after close"), Err(SendError::Closed));
    let (got, why, open) = common::within("handler end", rx.recv()).await.unwrap();
    assert_eq!(got, vec![wshub::Message::from("last words")]);
    assert_eq!(
        why,
        Some(Disconnect::Closed {
            code: CloseCode::NORMAL,
            reason: String::new(),
            by_peer: true
        })
    );
    assert!(!open);
    assert_eq!(
        closed(&client).await,
        Disconnect::Closed {
            code: CloseCode::NORMAL,
            reason: String::new(),
            by_peer: false
        }
    );
}

#[tokio::test]
async fn client_close_4000_with_reason() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut client = common::connect(&ts.url("/")).await;
    let mut ws = sockets.next().await;
    client.close(CloseCode(4000), "going to lunch").unwrap();
    assert_eq!(ws.recv().await, None);
    let want = Disconnect::Closed {
        code: CloseCode(4000),
        reason: "going to lunch".into(),
        by_peer: true,
    };
    assert_eq!(closed(&ws).await, want);
    assert_eq!(ws.disconnect().unwrap().code(), CloseCode(4000));
    assert!(recv_until_end(&mut client).await.is_empty());
}

#[tokio::test]
async fn raw_close_without_status_is_1005_and_echoed_empty() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    raw.send_frame(true, op::CLOSE, &[], true).await;
    let reply = raw.expect_frame().await;
    assert_eq!(reply.opcode, op::CLOSE);
    assert!(reply.payload.is_empty(), "{reply:?}");
    assert!(raw.frames_until_eof().await.is_empty());
    assert_eq!(
        closed(&ws).await,
        Disconnect::Closed {
            code: CloseCode::NO_STATUS,
            reason: String::new(),
            by_peer: true
        }
    );
}

#[tokio::test]
async fn raw_close_is_echoed_with_its_code_then_eof() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    raw.send_close(4321, "custom").await;
    let reply = raw.expect_frame().await;
    assert_eq!(reply.close_code(), Some(4321));
    assert!(raw.frames_until_eof().await.is_empty());
    assert_eq!(closed(&ws).await.code(), CloseCode(4321));
}

#[tokio::test]
async fn server_close_4001_reaches_the_client_after_queued_messages() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut client = common::connect(&ts.url("/")).await;
    let ws = sockets.next().await;
    ws.send("one").unwrap();
    ws.send("two").unwrap();
    ws.close(CloseCode(4001), "x").unwrap();
    assert!(!ws.is_open());
    assert_eq!(ws.send("three"), Err(SendError::Closed));
    assert_eq!(ws.close(CloseCode::NORMAL, ""), Err(SendError::Closed));

    let got = recv_until_end(&mut client).await;
    assert_eq!(
        got,
        vec![wshub::Message::from("one"), wshub::Message::from("two")]
    );
    assert_eq!(
        closed(&client).await,
        Disconnect::Closed {
            code: CloseCode(4001),
            reason: "x".into(),
            by_peer: true
        }
    );
    assert_eq!(
        closed(&ws).await,
        Disconnect::Closed {
            code: CloseCode(4001),
            reason: "x".into(),
            by_peer: false
        }
    );
}

#[tokio::test]
async fn server_close_seen_by_raw_client_and_long_reason_is_cut() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    let long = "é".repeat(100); // 200 bytes
    ws.close(CloseCode(4002), &long).unwrap();
    let f = raw.expect_frame().await;
    assert_eq!(f.close_code(), Some(4002));
    assert!(
        f.payload.len() <= 125,
        "control frame too long: {}",
        f.payload.len()
    );
    let reason = f.close_reason();
    assert!(
        long.starts_with(&reason) && !reason.is_empty(),
        "{reason:?}"
    );
    raw.send_close(4002, "").await;
    assert!(raw.frames_until_eof().await.is_empty());
    assert!(matches!(
        closed(&ws).await,
        Disconnect::Closed {
            code: CloseCode(4002),
            by_peer: false,
            ..
        }
    ));
}

#[tokio::test]
async fn invalid_close_codes_are_refused_by_the_api() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut client = common::connect(&ts.url("/")).await;
    let ws = sockets.next().await;
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000, u16::MAX] {
        assert_eq!(
            ws.close(CloseCode(code), "nope"),
            Err(SendError::InvalidCloseCode(code)),
            "server side, code {code}"
        );
        assert_eq!(
            client.close(CloseCode(code), "nope"),
            Err(SendError::InvalidCloseCode(code)),
            "client side, code {code}"
        );
    }
    // Still open and working.
    assert!(ws.is_open());
    ws.send("ok").unwrap();
    assert_eq!(common::recv_text(&mut client).await, "ok");
}

#[tokio::test]
async fn invalid_close_code_on_the_wire_gets_1002() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    raw.send_close(1005, "").await;
    let f = raw.expect_frame().await;
    assert_eq!(f.close_code(), Some(1002), "{f:?}");
    assert!(raw.frames_until_eof().await.is_empty());
    assert_eq!(
        closed(&ws).await,
        Disconnect::Protocol(ProtocolError::InvalidCloseCode(1005))
    );
}

/// Sends `bytes` after the handshake and expects a close frame with `code`,
/// then EOF; returns the server-side end reason.
async fn violation(bytes: &[u8], code: u16, config: Config) -> Disconnect {
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    tokio::io::AsyncWriteExt::write_all(&mut raw.io, bytes)
        .await
        .unwrap();
    let f = raw.expect_frame().await;
    assert_eq!(f.opcode, op::CLOSE, "{f:?}");
    assert_eq!(f.close_code(), Some(code), "reason: {}", f.close_reason());
    let rest = raw.frames_until_eof().await;
    assert!(rest.is_empty(), "frames after the close: {rest:?}");
    let why = closed(&ws).await;
    assert_eq!(why.code(), CloseCode(code));
    why
}

#[tokio::test]
async fn unmasked_frame_gets_1002_then_eof() {
    let why = violation(
        &common::encode_frame(true, op::TEXT, b"not masked", None),
        1002,
        Config::default(),
    )
    .await;
    assert_eq!(why, Disconnect::Protocol(ProtocolError::UnmaskedFrame));
}

#[tokio::test]
async fn reserved_bits_get_1002() {
    let mut frame = common::encode_frame(true, op::TEXT, b"rsv", Some(common::MASK));
    frame[0] |= 0x40; // RSV1 without a negotiated extension
    violation(&frame, 1002, Config::default()).await;
}

#[tokio::test]
async fn unknown_opcode_gets_1002() {
    violation(
        &common::encode_frame(true, 0x3, b"", Some(common::MASK)),
        1002,
        Config::default(),
    )
    .await;
}

#[tokio::test]
async fn fragmented_control_frame_gets_1002() {
    violation(
        &common::encode_frame(false, op::PING, b"", Some(common::MASK)),
        1002,
        Config::default(),
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_gets_1007() {
    violation(
        &common::encode_frame(true, op::TEXT, &[0xC3, 0x28], Some(common::MASK)),
        1007,
        Config::default(),
    )
    .await;
}

#[tokio::test]
async fn oversized_message_gets_1009() {
    violation(
        &common::encode_frame(true, op::BINARY, &[0u8; 2048], Some(common::MASK)),
        1009,
        Config::builder().max_message_size(1024).build(),
    )
    .await;
}

#[tokio::test]
async fn violation_after_valid_messages_still_delivers_them() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let mut ws = sockets.next().await;
    let mut bytes = common::encode_frame(true, op::TEXT, b"good", Some(common::MASK));
    bytes.extend(common::encode_frame(true, op::TEXT, b"bad", None));
    tokio::io::AsyncWriteExt::write_all(&mut raw.io, &bytes)
        .await
        .unwrap();
    assert_eq!(common::recv_text(&mut ws).await, "good");
    assert_eq!(ws.recv().await, None);
    assert_eq!(raw.expect_frame().await.close_code(), Some(1002));
}

#[tokio::test]
async fn terminate_drops_without_close_frame() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    ws.send("before").unwrap();
    // Make sure "before" is on the wire, so terminate has nothing queued.
    assert_eq!(raw.expect_frame().await.payload, b"before");
    ws.terminate();
    assert!(!ws.is_open());
    assert_eq!(ws.send("after"), Err(SendError::Closed));
    let frames = raw.frames_until_eof().await;
    assert!(frames.is_empty(), "expected no close frame, got {frames:?}");
    assert_eq!(closed(&ws).await, Disconnect::Terminated);

    // A wshub client sees an abnormal end (1006).
    let client = common::connect(&ts.url("/")).await;
    let ws = sockets.next().await;
    ws.terminate();
    let why = closed(&client).await;
    assert_eq!(why, Disconnect::Abnormal);
    assert_eq!(why.code(), CloseCode::ABNORMAL);
}

#[tokio::test]
async fn raw_eof_without_close_is_abnormal() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    drop(raw);
    assert_eq!(closed(&ws).await, Disconnect::Abnormal);
}

#[tokio::test]
async fn last_handle_dropped_after_handler_returns_closes_with_1000() {
    // The handler returns at once and drops its only handle.
    let ts = TestServer::start(Config::default(), |_ws| async {}).await;
    let mut client = common::connect(&ts.url("/")).await;
    assert!(recv_until_end(&mut client).await.is_empty());
    assert_eq!(
        closed(&client).await,
        Disconnect::Closed {
            code: CloseCode::NORMAL,
            reason: String::new(),
            by_peer: true
        }
    );
}

#[tokio::test]
async fn dropping_the_client_handle_closes_with_1000() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let client = common::connect(&ts.url("/")).await;
    let ws = sockets.next().await;
    drop(client);
    assert_eq!(
        closed(&ws).await,
        Disconnect::Closed {
            code: CloseCode::NORMAL,
            reason: String::new(),
            by_peer: true
        }
    );
}

#[tokio::test]
async fn close_timeout_when_peer_never_answers() {
    let (ts, mut sockets) = TestServer::start_channel(
        Config::builder()
            .close_timeout(std::time::Duration::from_millis(100))
            .build(),
    )
    .await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert_eq!(closed(&ws).await, Disconnect::CloseTimeout);
    let frames = raw.frames_until_eof().await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].close_code(), Some(1000));
}

/// A handler that panics must not leave its connection behind: the peer gets
/// close 1011, other handles learn that it ended, and the registry (which
/// `max_connections` counts) forgets it.
#[tokio::test]
async fn panicking_handler_releases_the_connection() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ts = TestServer::start(Config::default(), move |mut ws| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ws.clone());
            if ws.recv().await.is_some() {
                panic!("handler bug (intentional, from the test)");
            }
        }
    })
    .await;
    let client = common::connect(&ts.url("/")).await;
    let other_handle = common::within("socket", rx.recv()).await.unwrap();
    client.send("boom").unwrap();
    // The client is told with close 1011 (internal error)…
    assert_eq!(closed(&client).await.code(), CloseCode::INTERNAL_ERROR);
    // …and the server side must see it too, and forget it.
    // (5 s is only a hang guard: with the bug this never resolves.)
    let why = tokio::time::timeout(std::time::Duration::from_secs(5), other_handle.closed()).await;
    assert!(
        why.is_ok(),
        "closed() never resolved after the handler panicked"
    );
    drop(other_handle);
    assert!(
        ts.server.clients().is_empty(),
        "the panicked connection is still registered"
    );
}

/// `WebSocket` is `Clone` ("all clones refer to the same connection"): tasks
/// receiving on different clones must all learn that the connection ended.
#[tokio::test]
async fn recv_on_two_clones_both_end() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let client = common::connect(&ts.url("/")).await;
    let ws = sockets.next().await;
    let mut a = ws.clone();
    let mut b = ws.clone();
    let ta = tokio::spawn(async move { while a.recv().await.is_some() {} });
    let tb = tokio::spawn(async move { while b.recv().await.is_some() {} });
    // Let both tasks park in recv.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    client.close(CloseCode::NORMAL, "").unwrap();
    closed(&ws).await;
    // (5 s is only a hang guard: with the bug one task never wakes.)
    let guard = std::time::Duration::from_secs(5);
    let ra = tokio::time::timeout(guard, ta).await;
    let rb = tokio::time::timeout(guard, tb).await;
    assert!(
        ra.is_ok() && rb.is_ok(),
        "a recv on a clone never returned None after the end (a: {}, b: {})",
        ra.is_ok(),
        rb.is_ok()
    );
}

//! Heartbeat with short real intervals (no clock assertions: every wait is for
//! an event). Server side: a raw client that completes the handshake and never
//! answers pings is terminated with `Disconnect::PongTimeout` (and sees pings,
//! then EOF without a close frame), while a wshub client, which answers pings on
//! its own, stays connected across many ping rounds (counted by a raw observer
//! that answers its own pings). Client side: `ClientBuilder::ping_interval`
//! pings a raw server, survives when it answers and times out when it does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{op, within, RawClient, TestServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wshub::client::ClientBuilder;
use wshub::{Config, Disconnect};

fn heartbeat_config() -> Config {
    Config::builder()
        .ping_interval(Some(Duration::from_millis(50)))
        .pong_timeout(Duration::from_millis(100))
        .build()
}

#[tokio::test]
async fn silent_raw_client_is_terminated_with_pong_timeout() {
    let (ts, mut sockets) = TestServer::start_channel(heartbeat_config()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    // The raw client reads nothing and answers nothing while the server times it out.
    assert_eq!(common::closed(&ws).await, Disconnect::PongTimeout);
    assert_eq!(ws.disconnect(), Some(Disconnect::PongTimeout));
    assert_eq!(ws.disconnect().unwrap().code(), wshub::CloseCode::ABNORMAL);
    let mut ws = ws;
    assert_eq!(ws.recv().await, None);
    assert!(ws.send("late").is_err());

    // What the client got: ping(s), then the TCP connection ended, without a
    // close frame.
    let frames = raw.frames_until_eof().await;
    assert!(!frames.is_empty(), "no ping was sent");
    assert!(
        frames.iter().all(|f| f.opcode == op::PING),
        "expected only pings, got {frames:?}"
    );
}

#[tokio::test]
async fn answering_clients_survive_many_rounds_while_a_silent_one_is_dropped() {
    let (ts, mut sockets) = TestServer::start_channel(heartbeat_config()).await;

    let mut client = common::connect(&ts.url("/wshub")).await;
    let client_server_side = sockets.next().await;
    let _silent = RawClient::connect(ts.addr, "/silent").await;
    let silent_server_side = sockets.next().await;
    let mut observer = RawClient::connect(ts.addr, "/observer").await;
    let observer_server_side = sockets.next().await;
    // The observer answers every ping from the start and counts them.
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let observer_task = tokio::spawn(async move {
        let mut pings = 0;
        while let Ok(Some(f)) = observer.read_frame().await {
            assert_eq!(f.opcode, op::PING, "{f:?}");
            observer.send_frame(true, op::PONG, &f.payload, true).await;
            pings += 1;
            let _ = count_tx.send(pings);
        }
    });

    // The silent one is timed out…
    assert_eq!(
        common::closed(&silent_server_side).await,
        Disconnect::PongTimeout
    );
    // …then let ten more ping rounds pass.
    let seen = *count.borrow();
    within("ten more pings", count.wait_for(|n| *n >= seen + 10))
        .await
        .unwrap();
    // The wshub client (and the observer) are still connected and working.
    assert_eq!(client_server_side.disconnect(), None);
    assert_eq!(observer_server_side.disconnect(), None);
    client_server_side.send("still there").unwrap();
    assert_eq!(common::recv_text(&mut client).await, "still there");
    client.send("and back").unwrap();
    let mut s = client_server_side;
    assert_eq!(common::recv_text(&mut s).await, "and back");
    observer_task.abort();
}

#[tokio::test]
async fn unsolicited_pongs_do_not_hurt_and_late_pong_resets_deadline() {
    let (ts, mut sockets) = TestServer::start_channel(heartbeat_config()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    raw.send_frame(true, op::PONG, b"unsolicited", true).await;
    for _ in 0..5 {
        let f = raw.expect_frame().await;
        assert_eq!(f.opcode, op::PING);
        raw.send_frame(true, op::PONG, &f.payload, true).await;
    }
    assert_eq!(ws.disconnect(), None);
}

#[tokio::test]
async fn heartbeat_off_sends_no_pings() {
    let (ts, mut sockets) =
        TestServer::start_channel(Config::builder().ping_interval(None).build()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    // The first frame the client sees is our message, not a ping.
    ws.send("first").unwrap();
    let f = raw.expect_frame().await;
    assert_eq!((f.opcode, f.payload.as_slice()), (op::TEXT, &b"first"[..]));
}

/// A one-connection raw WebSocket server: accepts the upgrade, then hands the
/// stream back.
async fn raw_server_accept(listener: &tokio::net::TcpListener) -> RawClient {
    let (tcp, _) = within("accept", listener.accept()).await.unwrap();
    let mut io = BufReader::new(tcp);
    let mut key = None;
    loop {
        let mut line = String::new();
        within("request line", io.read_line(&mut line))
            .await
            .unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.trim().eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(v.trim().to_owned());
            }
        }
    }
    let accept = wshub::proto::handshake::accept_key(key.expect("key").as_bytes());
    let res = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    io.write_all(res.as_bytes()).await.unwrap();
    RawClient {
        io,
        response: common::HttpResponse {
            status: 101,
            headers: Vec::new(),
            body: String::new(),
        },
    }
}

#[tokio::test]
async fn client_heartbeat_survives_an_answering_server() {
    let (listener, addr) = common::bind().await;
    let builder = ClientBuilder::new()
        .ping_interval(Some(Duration::from_millis(50)))
        .connect_timeout(Duration::from_secs(10));
    let url = format!("ws://{addr}/");
    let (client, mut server) = tokio::join!(builder.connect(&url), raw_server_accept(&listener));
    let mut client = client.unwrap();
    for _ in 0..8 {
        let f = server.expect_frame().await;
        assert_eq!(f.opcode, op::PING);
        assert!(f.masked, "client frames must be masked");
        // Answer unmasked, as a server.
        server.send_frame(true, op::PONG, &f.payload, false).await;
    }
    assert_eq!(client.disconnect(), None);
    server.send_frame(true, op::TEXT, b"alive", false).await;
    assert_eq!(common::recv_text(&mut client).await, "alive");
}

/// `ClientBuilder` has no `pong_timeout` setter, so the client waits its
/// default 10 s for a pong: run on paused time (loopback I/O is ready at once,
/// so the auto-advance only ever jumps to the client's own timers).
#[tokio::test(start_paused = true)]
async fn client_heartbeat_times_out_a_silent_server() {
    let (listener, addr) = common::bind().await;
    let builder = ClientBuilder::new()
        .ping_interval(Some(Duration::from_millis(50)))
        .connect_timeout(Duration::from_secs(10));
    let url = format!("ws://{addr}/");
    let (client, _server) = tokio::join!(builder.connect(&url), raw_server_accept(&listener));
    let client = client.unwrap();
    assert_eq!(common::closed(&client).await, Disconnect::PongTimeout);
}

#[tokio::test]
async fn server_ping_api_reaches_client_and_is_answered() {
    let (ts, mut sockets) =
        TestServer::start_channel(Config::builder().ping_interval(None).build()).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    ws.ping(&b"app-ping"[..]).unwrap();
    let f = raw.expect_frame().await;
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (op::PING, &b"app-ping"[..])
    );
    assert_eq!(
        ws.ping(vec![0u8; 126]),
        Err(wshub::SendError::ControlTooLarge(126))
    );
    // The raw client pings; the server answers with the same payload.
    raw.send_frame(true, op::PING, b"client-ping", true).await;
    let f = raw.expect_frame().await;
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (op::PONG, &b"client-ping"[..])
    );
}

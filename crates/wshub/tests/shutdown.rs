//! Graceful shutdown through `serve(listener, handler, shutdown)`: the shutdown
//! future resolves (a oneshot) → every connected client gets close 1001 and its
//! handler sees the end, `serve` returns `Ok`, and new connections are refused.
//! Also: a client that never answers the close is dropped after
//! `shutdown_timeout`; a handshake that arrives while draining gets 503 from
//! `Server::shutdown`; `Server::shutdown` on its own closes connections too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{closed, RawClient, TestServer};
use wshub::{CloseCode, Config, Disconnect, Server};

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_serve_returns() {
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    let ts = TestServer::start(Config::default(), move |mut ws| {
        let ended_tx = ended_tx.clone();
        let ready_tx = ready_tx.clone();
        async move {
            let _ = ready_tx.send(());
            while ws.recv().await.is_some() {}
            let _ = ended_tx.send(ws.disconnect());
        }
    })
    .await;
    let addr = ts.addr;
    let server = ts.server.clone();

    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(common::connect(&ts.url(&format!("/{i}"))).await);
        common::within("handler start", ready.recv()).await.unwrap();
    }
    let mut raw = RawClient::connect(addr, "/raw").await;
    common::within("handler start", ready.recv()).await.unwrap();
    assert_eq!(server.clients().len(), 4);

    // Answer the raw client's close so it does not hold up the shutdown.
    let raw_task = tokio::spawn(async move {
        let f = raw.expect_frame().await;
        raw.send_close(f.close_code().unwrap(), "").await;
        let rest = raw.frames_until_eof().await;
        (f, rest)
    });

    ts.stop().await.unwrap(); // resolves the shutdown future, awaits serve

    for c in &mut clients {
        assert!(common::recv_until_end(c).await.is_empty());
        assert_eq!(
            closed(c).await,
            Disconnect::Closed {
                code: CloseCode::GOING_AWAY,
                reason: "server shutting down".into(),
                by_peer: true
            }
        );
    }
    let (f, rest) = common::within("raw client", raw_task).await.unwrap();
    assert_eq!(f.close_code(), Some(1001));
    assert!(rest.is_empty());
    for _ in 0..4 {
        let why = common::within("handler end", ended.recv()).await.unwrap();
        assert!(
            matches!(
                why,
                Some(Disconnect::Closed {
                    code: CloseCode::GOING_AWAY,
                    by_peer: false,
                    ..
                })
            ),
            "{why:?}"
        );
    }
    assert!(server.is_draining());
    assert_eq!(server.active_connections(), 0);
    assert!(server.clients().is_empty());

    // The listener is gone.
    let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(wshub::client::connect(&format!("ws://{addr}/"))
        .await
        .is_err());
}

#[tokio::test]
async fn shutdown_with_no_clients_returns() {
    let ts = TestServer::start(Config::default(), common::echo).await;
    let addr = ts.addr;
    ts.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn unresponsive_client_is_dropped_after_shutdown_timeout() {
    let config = Config::builder()
        .shutdown_timeout(Duration::from_millis(200))
        .close_timeout(Duration::from_secs(30))
        .build();
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let ws = sockets.next().await;
    let server = ts.server.clone();
    // serve returns although the client never answers the close frame.
    ts.stop().await.unwrap();
    assert_eq!(closed(&ws).await, Disconnect::Terminated);
    let frames = raw.frames_until_eof().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(1001));
    drop(ws);
    assert_eq!(server.active_connections(), 0);
}

#[tokio::test]
async fn upgrade_while_draining_gets_503() {
    // A connection that is mid-handshake when the shutdown starts is refused.
    let config = Config::builder()
        .shutdown_timeout(Duration::from_secs(30))
        .build();
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    // Keeps the server draining: an open connection that we answer later.
    let mut holder = RawClient::connect(ts.addr, "/").await;
    let _holder_ws = sockets.next().await;
    // Accepted by the listener, request not sent yet.
    let mut late = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    // Wait for the accept loop to have taken it (it counts as active).
    let server = ts.server.clone();
    common::within("accept", async {
        while server.active_connections() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let stop = tokio::spawn(ts.stop());
    // The close frame to the holder proves the drain has begun.
    let f = holder.expect_frame().await;
    assert_eq!(f.close_code(), Some(1001));
    assert!(server.is_draining());
    tokio::io::AsyncWriteExt::write_all(&mut late, common::upgrade_request("/", &[]).as_bytes())
        .await
        .unwrap();
    let res = common::read_response_to_eof(&mut late).await;
    assert_eq!(res.status, 503, "{res:?}");
    assert!(res.body.contains("shutting down"), "{res:?}");
    holder.send_close(1001, "").await;
    assert!(holder.frames_until_eof().await.is_empty());
    drop(holder);
    common::within("serve", stop).await.unwrap().unwrap();
}

#[tokio::test]
async fn server_shutdown_method_closes_connections() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut client = common::connect(&ts.url("/")).await;
    let _ws = sockets.next().await;
    let server: Server = ts.server.clone();
    let (_, ()) = tokio::join!(common::recv_until_end(&mut client), async {
        common::within("Server::shutdown", server.shutdown()).await;
    });
    assert_eq!(closed(&client).await.code(), CloseCode::GOING_AWAY);
    // Still accepting TCP (serve is running), but upgrades are refused.
    let res = common::http_exchange(ts.addr, common::upgrade_request("/", &[]).as_bytes()).await;
    assert_eq!(res.status, 503);
}

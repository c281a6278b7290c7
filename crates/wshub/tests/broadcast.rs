//! Broadcast through `Server::clients()`: `broadcast`, `broadcast_except`
//! (the sender is excluded), `broadcast_filter` by path and query, prepared
//! broadcasts; the `BroadcastReport` counts (queued / closed); each of N
//! clients receives exactly its expected messages in order; a chat handler that
//! relays to everyone but the sender; broadcast to a mix of deflate and plain
//! clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{recv_text, RawClient, TestServer};
use wshub::client::ClientBuilder;
use wshub::{BroadcastReport, Config, Message, PreparedMessage, WebSocket};

/// Reads text messages until `end` (exclusive) arrives.
async fn texts_until(ws: &mut WebSocket, end: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let t = recv_text(ws).await;
        if t == end {
            return out;
        }
        out.push(t);
    }
}

#[tokio::test]
async fn broadcast_variants_reach_exactly_the_right_clients_in_order() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    // (path, who)
    let paths = ["/a?room=1", "/a?room=2", "/a?room=1", "/b", "/b?room=1"];
    let mut clients = Vec::new();
    let mut server_side = Vec::new();
    for p in paths {
        clients.push(common::connect(&ts.url(p)).await);
        server_side.push(sockets.next().await);
    }
    let clients_reg = ts.server.clients();
    let sender = server_side[0].id();

    let mut expected: Vec<Vec<String>> = vec![Vec::new(); paths.len()];
    for round in 0..20 {
        let msg = format!("all {round}");
        let r = clients_reg.broadcast(msg.clone());
        assert_eq!(
            r,
            BroadcastReport {
                queued: 5,
                closed: 0,
                slow: 0
            }
        );
        expected.iter_mut().for_each(|e| e.push(msg.clone()));

        let msg = format!("except {round}");
        let r = clients_reg.broadcast_except(sender, msg.clone());
        assert_eq!(r.queued, 4);
        expected
            .iter_mut()
            .skip(1)
            .for_each(|e| e.push(msg.clone()));

        let msg = format!("path /a {round}");
        let r = clients_reg.broadcast_filter(msg.clone(), |c| c.path() == "/a");
        assert_eq!(r.queued, 3);
        for i in [0, 1, 2] {
            expected[i].push(msg.clone());
        }

        let msg = format!("room 1 {round}");
        let r = clients_reg.broadcast_filter(msg.clone(), |c| {
            c.query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "room=1"))
        });
        assert_eq!(r.queued, 3);
        for i in [0, 2, 4] {
            expected[i].push(msg.clone());
        }

        let r = clients_reg.broadcast_filter("nobody", |_| false);
        assert_eq!(r, BroadcastReport::default());
    }
    clients_reg.broadcast("END");

    for (i, c) in clients.iter_mut().enumerate() {
        let got = common::within("broadcasts", texts_until(c, "END")).await;
        assert_eq!(got, expected[i], "client {i} ({})", paths[i]);
    }
}

#[tokio::test]
async fn broadcast_prepared_and_binary() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut a = common::connect(&ts.url("/")).await;
    let mut b = common::connect(&ts.url("/")).await;
    let _sa = sockets.next().await;
    let _sb = sockets.next().await;
    let prepared = Arc::new(PreparedMessage::new(&Message::Binary(
        vec![7u8; 300].into(),
    )));
    let r = ts.server.clients().broadcast_prepared(&prepared, |_| true);
    assert_eq!(r.queued, 2);
    for c in [&mut a, &mut b] {
        assert_eq!(
            common::recv(c).await,
            Message::Binary(vec![7u8; 300].into())
        );
    }
    // A handle can also send the same prepared frame.
    _sa.send_prepared(&prepared).unwrap();
    assert_eq!(common::recv(&mut a).await.len(), 300);
}

#[tokio::test]
async fn report_counts_closing_receivers() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut open = RawClient::connect(ts.addr, "/").await;
    let open_ws = sockets.next().await;
    // A raw client that never answers our close frame: it stays registered
    // (closing) for the close timeout, so the count is deterministic.
    let mut closing = RawClient::connect(ts.addr, "/").await;
    let closing_ws = sockets.next().await;
    closing_ws
        .close(wshub::CloseCode::GOING_AWAY, "bye")
        .unwrap();
    assert!(!closing_ws.is_open());
    let r = ts.server.clients().broadcast("after close");
    assert_eq!(
        r,
        BroadcastReport {
            queued: 1,
            closed: 1,
            slow: 0
        }
    );
    assert_eq!(open.expect_frame().await.payload, b"after close");
    let f = closing.expect_frame().await;
    assert_eq!(f.close_code(), Some(1001));
    drop(open_ws);
}

#[tokio::test]
async fn chat_relays_to_everyone_but_the_sender() {
    let server = wshub::Server::new(Config::default());
    let clients = server.clients().clone();
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    let ts = TestServer::start_server(server, move |mut ws| {
        let clients = clients.clone();
        let ready_tx = ready_tx.clone();
        async move {
            let _ = ready_tx.send(ws.id());
            while let Some(msg) = ws.recv().await {
                let text = format!("{}: {}", ws.id(), msg.as_text().unwrap_or("?"));
                clients.broadcast_except(ws.id(), text);
            }
        }
    })
    .await;
    const N: usize = 4;
    let mut cs = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..N {
        cs.push(common::connect(&ts.url("/chat")).await);
        ids.push(common::within("ready", ready.recv()).await.unwrap());
    }
    // Each client speaks in turn; a client's own lines never come back.
    const ROUNDS: usize = 10;
    for r in 0..ROUNDS {
        for (i, c) in cs.iter().enumerate() {
            c.send(format!("r{r} from {i}")).unwrap();
        }
        // Senders' relays interleave arbitrarily: compare as sets.
        for (i, c) in cs.iter_mut().enumerate() {
            let mut got = Vec::new();
            for _ in 0..N - 1 {
                got.push(recv_text(c).await);
            }
            got.sort();
            let mut want: Vec<String> = (0..N)
                .filter(|j| *j != i)
                .map(|j| format!("{}: r{r} from {j}", ids[j]))
                .collect();
            want.sort();
            assert_eq!(got, want, "client {i} round {r}");
        }
    }
}

#[tokio::test]
async fn messages_from_one_sender_keep_their_order_for_every_listener() {
    let server = wshub::Server::new(Config::default());
    let clients = server.clients().clone();
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    let ts = TestServer::start_server(server, move |mut ws| {
        let clients = clients.clone();
        let ready_tx = ready_tx.clone();
        async move {
            let _ = ready_tx.send(());
            while let Some(msg) = ws.recv().await {
                clients.broadcast_except(ws.id(), msg);
            }
        }
    })
    .await;
    let sender = common::connect(&ts.url("/")).await;
    common::within("ready", ready.recv()).await.unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(common::connect(&ts.url("/")).await);
        common::within("ready", ready.recv()).await.unwrap();
    }
    for i in 0..500 {
        sender.send(format!("{i}")).unwrap();
    }
    sender.send("END").unwrap();
    let want: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    for l in &mut listeners {
        assert_eq!(common::within("relay", texts_until(l, "END")).await, want);
    }
}

#[tokio::test]
async fn broadcast_to_mixed_deflate_and_plain_clients() {
    let (ts, mut sockets) =
        TestServer::start_channel(Config::builder().deflate(true).build()).await;
    let mut z = common::within(
        "connect",
        ClientBuilder::new().deflate(true).connect(&ts.url("/")),
    )
    .await
    .unwrap();
    let mut plain = common::connect(&ts.url("/")).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let sz = sockets.next().await;
    let sp = sockets.next().await;
    let _sr = sockets.next().await;
    assert!(sz.is_compressed() && z.is_compressed());
    assert!(!sp.is_compressed() && !plain.is_compressed());

    let big = "broadcast me, I compress well. ".repeat(2000);
    for i in 0..5 {
        let msg = format!("{i}:{big}");
        assert_eq!(ts.server.clients().broadcast(msg.clone()).queued, 3);
        assert_eq!(recv_text(&mut z).await, msg);
        assert_eq!(recv_text(&mut plain).await, msg);
        let f = raw.expect_frame().await;
        assert!(!f.rsv1, "uncompressed client got a compressed frame");
        assert_eq!(f.payload, msg.as_bytes());
    }
    // Short messages (below the compression threshold) too.
    ts.server.clients().broadcast("tiny");
    assert_eq!(recv_text(&mut z).await, "tiny");
    assert_eq!(recv_text(&mut plain).await, "tiny");
}

//! What the server-side `WebSocket` knows about its connection: a unique id,
//! the peer address (checked against the raw client's own local address), the
//! client IP, path, query, request headers (and `keep_headers(false)`), the
//! negotiated subprotocol (client order wins, custom selector), and the
//! registry (`clients().get`, `len`, removal after the end).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::IpAddr;

use common::{RawClient, TestServer};
use wshub::client::ClientBuilder;
use wshub::Config;

#[tokio::test]
async fn ids_are_unique_and_registered() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let mut clients = Vec::new();
    let mut server_side = Vec::new();
    for i in 0..8 {
        clients.push(common::connect(&ts.url(&format!("/c{i}"))).await);
        server_side.push(sockets.next().await);
    }
    let ids: HashSet<_> = server_side.iter().map(|ws| ws.id()).collect();
    assert_eq!(ids.len(), 8, "ids must be unique");
    assert_eq!(ts.server.clients().len(), 8);
    for (i, ws) in server_side.iter().enumerate() {
        let got = ts.server.clients().get(ws.id()).expect("registered");
        assert_eq!(got.path(), format!("/c{i}"));
    }
    let all: HashSet<_> = ts.server.clients().all().iter().map(|w| w.id()).collect();
    assert_eq!(all, ids);

    // A second server numbers its connections independently, but ids stay
    // unique within the process.
    let (ts2, mut sockets2) = TestServer::start_channel(Config::default()).await;
    let _c = common::connect(&ts2.url("/")).await;
    let other = sockets2.next().await;
    assert!(ts2.server.clients().get(other.id()).is_some());
    assert_eq!(ts2.server.clients().len(), 1);
}

/// `ConnectionId` is documented as "unique within the process"; two servers in
/// one process must not hand out the same id.
#[tokio::test]
async fn ids_are_unique_across_servers_in_one_process() {
    let (a, mut sa) = TestServer::start_channel(Config::default()).await;
    let (b, mut sb) = TestServer::start_channel(Config::default()).await;
    let _ca = common::connect(&a.url("/")).await;
    let _cb = common::connect(&b.url("/")).await;
    let wa = sa.next().await;
    let wb = sb.next().await;
    assert_ne!(wa.id(), wb.id(), "two servers gave out the same id");
}

#[tokio::test]
async fn peer_addr_path_query_headers_and_ip() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let raw = RawClient::connect_with(
        ts.addr,
        "/chat/room%201?user=ann&x=1",
        &[("X-Custom", "hello"), ("Origin", "https://example.test")],
    )
    .await;
    let ws = sockets.next().await;
    assert_eq!(ws.peer_addr(), raw.local_addr());
    assert_eq!(ws.client_ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(ws.path(), "/chat/room%201");
    assert_eq!(ws.query(), Some("user=ann&x=1"));
    let headers = ws.headers().expect("headers kept by default");
    assert_eq!(headers.get("x-custom").unwrap(), "hello");
    assert_eq!(headers.get("origin").unwrap(), "https://example.test");
    assert!(headers.get("host").is_some());
    // The handshake's own fields were acted on and are not kept.
    for name in wshub::headers::HANDSHAKE_FIELDS {
        assert!(headers.get(name).is_none(), "{name} kept");
    }
    assert_eq!(ws.protocol(), None);
    assert!(!ws.is_compressed());
    assert!(ws.is_open());
    assert_eq!(ws.disconnect(), None);

    // No query at all vs. an empty one.
    let _r = RawClient::connect(ts.addr, "/plain").await;
    let ws = sockets.next().await;
    assert_eq!((ws.path(), ws.query()), ("/plain", None));
    let _r = RawClient::connect(ts.addr, "/empty?").await;
    let ws = sockets.next().await;
    assert_eq!((ws.path(), ws.query()), ("/empty", Some("")));
}

#[tokio::test]
async fn wshub_client_headers_reach_the_server() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let client = common::within(
        "connect",
        ClientBuilder::new()
            .header("Authorization", "Bearer abc")
            .header("X-Trace", "42")
            .connect(&ts.url("/api?v=2")),
    )
    .await
    .unwrap();
    let ws = sockets.next().await;
    let h = ws.headers().unwrap();
    assert_eq!(h.get("authorization").unwrap(), "Bearer abc");
    assert_eq!(h.get("x-trace").unwrap(), "42");
    assert_eq!((ws.path(), ws.query()), ("/api", Some("v=2")));
    // The client side knows its own request too.
    assert_eq!((client.path(), client.query()), ("/api", Some("v=2")));
    assert_eq!(client.peer_addr(), ts.addr);
}

#[tokio::test]
async fn keep_headers_off() {
    let (ts, mut sockets) =
        TestServer::start_channel(Config::builder().keep_headers(false).build()).await;
    let _c = common::connect(&ts.url("/?a=b")).await;
    let ws = sockets.next().await;
    assert!(ws.headers().is_none());
    assert_eq!(ws.query(), Some("a=b"));
}

#[tokio::test]
async fn subprotocol_is_selected_in_client_order() {
    let (ts, mut sockets) =
        TestServer::start_channel(Config::builder().protocols(["v1.chat", "v2.chat"]).build())
            .await;

    let client = common::within(
        "connect",
        ClientBuilder::new()
            .protocols(["v2.chat", "v1.chat"])
            .connect(&ts.url("/")),
    )
    .await
    .unwrap();
    let ws = sockets.next().await;
    assert_eq!(ws.protocol(), Some("v2.chat"));
    assert_eq!(client.protocol(), Some("v2.chat"));

    // Nothing in common: connects without a subprotocol (not required).
    let client = common::within(
        "connect",
        ClientBuilder::new()
            .protocols(["mqtt"])
            .connect(&ts.url("/")),
    )
    .await
    .unwrap();
    let ws = sockets.next().await;
    assert_eq!(ws.protocol(), None);
    assert_eq!(client.protocol(), None);

    // A raw client sees the header in the 101.
    let raw =
        RawClient::connect_with(ts.addr, "/", &[("Sec-WebSocket-Protocol", "x, v1.chat")]).await;
    assert_eq!(
        raw.response.header("sec-websocket-protocol"),
        Some("v1.chat")
    );
    assert_eq!(sockets.next().await.protocol(), Some("v1.chat"));
}

#[tokio::test]
async fn custom_protocol_selector() {
    let config = Config::builder()
        .select_protocol(|offered| {
            offered
                .iter()
                .rev()
                .find(|p| p.starts_with("app."))
                .cloned()
        })
        .build();
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let client = common::within(
        "connect",
        ClientBuilder::new()
            .protocols(["app.a", "other", "app.b"])
            .connect(&ts.url("/")),
    )
    .await
    .unwrap();
    assert_eq!(client.protocol(), Some("app.b"));
    assert_eq!(sockets.next().await.protocol(), Some("app.b"));
}

#[tokio::test]
async fn ended_connection_leaves_the_registry() {
    let (ts, mut sockets) = TestServer::start_channel(Config::default()).await;
    let client = common::connect(&ts.url("/")).await;
    let ws = sockets.next().await;
    let id = ws.id();
    assert!(ts.server.clients().get(id).is_some());
    client.close(wshub::CloseCode::NORMAL, "").unwrap();
    common::closed(&ws).await;
    drop(ws);
    // Removal follows the driver's end; a handle from `get` after that is None.
    common::within("registry removal", async {
        while ts.server.clients().get(id).is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(ts.server.clients().is_empty());
}

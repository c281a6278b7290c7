//! The client IP over real connections: without trusted proxies the socket
//! address wins (a forged `X-Forwarded-For` is ignored); with
//! `TrustedProxies::loopback()` the forwarded address is used (`X-Forwarded-For`,
//! `Forwarded`, the rightmost untrusted hop, a pinned header), and the same IP
//! reaches `check_request` and broadcast filters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use common::{RawClient, TestServer};
use wshub::client::ClientBuilder;
use wshub::client_ip::{ProxyHeader, TrustedProxies};
use wshub::{Config, Server};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn client_ip_with(config: Config, headers: &[(&str, &str)]) -> IpAddr {
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let mut b = ClientBuilder::new();
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let _client = common::within("connect", b.connect(&ts.url("/")))
        .await
        .unwrap();
    let ws = sockets.next().await;
    assert_eq!(
        ws.peer_addr().ip(),
        ip("127.0.0.1"),
        "peer stays the socket"
    );
    ws.client_ip()
}

fn trusting_loopback() -> Config {
    Config::builder()
        .trusted_proxies(TrustedProxies::loopback())
        .build()
}

#[tokio::test]
async fn forwarded_for_is_used_behind_a_trusted_proxy() {
    let got = client_ip_with(trusting_loopback(), &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert_eq!(got, ip("203.0.113.7"));
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let got = client_ip_with(Config::default(), &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert_eq!(got, ip("127.0.0.1"));
}

#[tokio::test]
async fn no_header_behind_trusted_proxy_gives_the_peer() {
    assert_eq!(
        client_ip_with(trusting_loopback(), &[]).await,
        ip("127.0.0.1")
    );
}

#[tokio::test]
async fn rightmost_untrusted_hop_wins() {
    // The client forged the left entry; the proxy appended the real one.
    let got = client_ip_with(
        trusting_loopback(),
        &[("X-Forwarded-For", "1.2.3.4, 198.51.100.9, 127.0.0.5")],
    )
    .await;
    assert_eq!(got, ip("198.51.100.9"));
}

#[tokio::test]
async fn rfc7239_forwarded_header() {
    let got = client_ip_with(
        trusting_loopback(),
        &[("Forwarded", "for=\"[2001:db8::7]:4711\";proto=https")],
    )
    .await;
    assert_eq!(got, ip("2001:db8::7"));
}

#[tokio::test]
async fn pinned_header_ignores_the_other_one() {
    let config = Config::builder()
        .trusted_proxies(TrustedProxies::loopback().with_header(ProxyHeader::XForwardedFor))
        .build();
    let got = client_ip_with(
        config,
        &[
            ("Forwarded", "for=192.0.2.66"),
            ("X-Forwarded-For", "203.0.113.8"),
        ],
    )
    .await;
    assert_eq!(got, ip("203.0.113.8"));
}

#[tokio::test]
async fn garbage_hop_stops_at_the_proxy() {
    let got = client_ip_with(trusting_loopback(), &[("X-Forwarded-For", "not-an-ip")]).await;
    assert_eq!(got, ip("127.0.0.1"));
}

#[tokio::test]
async fn resolved_ip_reaches_check_and_broadcast_filter() {
    let server = Server::new(trusting_loopback());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    server.check_request(move |req| {
        log.lock().unwrap().push(req.client_ip);
        Ok(())
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ts = TestServer::start_server(server, move |ws| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ws);
        }
    })
    .await;
    let mut a = RawClient::connect_with(ts.addr, "/", &[("X-Forwarded-For", "203.0.113.7")]).await;
    let mut b = RawClient::connect_with(ts.addr, "/", &[("X-Forwarded-For", "203.0.113.99")]).await;
    let _wa = common::within("socket", rx.recv()).await.unwrap();
    let _wb = common::within("socket", rx.recv()).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![ip("203.0.113.7"), ip("203.0.113.99")]
    );
    let report = ts
        .server
        .clients()
        .broadcast_filter("only .7", |c| c.client_ip() == ip("203.0.113.7"));
    assert_eq!(report.queued, 1);
    ts.server.clients().broadcast("everyone");
    let f = a.expect_frame().await;
    assert_eq!(f.payload, b"only .7");
    assert_eq!(a.expect_frame().await.payload, b"everyone");
    assert_eq!(b.expect_frame().await.payload, b"everyone");
}

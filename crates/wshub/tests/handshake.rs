//! Upgrade handshake rejections of the standalone server, over raw TCP: a plain
//! GET (426 + `Upgrade` / `Sec-WebSocket-Version: 13`), a wrong version (426),
//! a missing or bad key (400), oversized or too many headers (431), POST (405,
//! with `Allow: GET`), HTTP/1.0 (505), the `check_request` hook (403 with its
//! body, and what the hook sees), `max_connections` (503), `require_protocol`
//! (400 with the reason), a client that sends nothing or only part of a request
//! (408 after `handshake_timeout`), and the wshub client's view of a refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{echo, http_exchange, upgrade_request, RawClient, TestServer, KEY};
use tokio::io::AsyncWriteExt;
use wshub::client::{ClientBuilder, ConnectError};
use wshub::proto::handshake::HandshakeError;
use wshub::{Config, Rejection, Server};

async fn echo_server(config: Config) -> TestServer {
    TestServer::start(config, echo).await
}

#[tokio::test]
async fn plain_get_without_upgrade_gets_426() {
    let ts = echo_server(Config::default()).await;
    let res = http_exchange(ts.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(res.status, 426, "{res:?}");
    assert!(res.body.contains("Upgrade: websocket"), "{res:?}");
    assert_eq!(res.header("connection"), Some("close"), "{res:?}");
}

/// RFC 9110 §15.5.22: a 426 response MUST carry an `Upgrade` header; RFC 6455
/// §4.2.2: tell the client the supported version with `Sec-WebSocket-Version`.
/// The hyper/axum path (`Rejection::to_response`) does both.
#[tokio::test]
async fn plain_get_426_carries_upgrade_and_version_headers() {
    let ts = echo_server(Config::default()).await;
    let res = http_exchange(ts.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(res.status, 426, "{res:?}");
    assert_eq!(res.header("upgrade"), Some("websocket"), "{res:?}");
    assert_eq!(res.header("sec-websocket-version"), Some("13"), "{res:?}");
}

/// RFC 6455 §4.4: a server that does not speak the requested version answers
/// with `Sec-WebSocket-Version` listing the ones it does.
#[tokio::test]
async fn wrong_version_gets_426_with_supported_version() {
    let ts = echo_server(Config::default()).await;
    let req =
        upgrade_request("/", &[]).replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let res = http_exchange(ts.addr, req.as_bytes()).await;
    assert_eq!(res.status, 426, "{res:?}");
    assert!(res.body.contains("version"), "{res:?}");
    assert_eq!(res.header("sec-websocket-version"), Some("13"), "{res:?}");
}

#[tokio::test]
async fn wrong_version_gets_426() {
    let ts = echo_server(Config::default()).await;
    let req =
        upgrade_request("/", &[]).replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let res = http_exchange(ts.addr, req.as_bytes()).await;
    assert_eq!(res.status, 426, "{res:?}");
    assert!(res.body.contains("\"8\""), "{res:?}");
}

#[tokio::test]
async fn missing_or_bad_key_gets_400() {
    let ts = echo_server(Config::default()).await;
    let missing = upgrade_request("/", &[]).replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
    let res = http_exchange(ts.addr, missing.as_bytes()).await;
    assert_eq!(res.status, 400, "{res:?}");
    assert!(res.body.contains("Sec-WebSocket-Key"), "{res:?}");

    let bad = upgrade_request("/", &[]).replace(KEY, "c2hvcnQ=");
    let res = http_exchange(ts.addr, bad.as_bytes()).await;
    assert_eq!(res.status, 400, "{res:?}");

    let twice = upgrade_request("/", &[("Sec-WebSocket-Key", KEY)]);
    let res = http_exchange(ts.addr, twice.as_bytes()).await;
    assert_eq!(res.status, 400, "{res:?}");
    assert!(res.body.contains("more than once"), "{res:?}");
}

#[tokio::test]
async fn missing_connection_upgrade_or_host_gets_400() {
    let ts = echo_server(Config::default()).await;
    let req = upgrade_request("/", &[]).replace("Connection: Upgrade", "Connection: keep-alive");
    let res = http_exchange(ts.addr, req.as_bytes()).await;
    assert_eq!(res.status, 400, "{res:?}");
    let req = upgrade_request("/", &[]).replace("Host: 127.0.0.1\r\n", "");
    let res = http_exchange(ts.addr, req.as_bytes()).await;
    assert_eq!(res.status, 400, "{res:?}");
    assert!(res.body.contains("Host"), "{res:?}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let ts = echo_server(Config::default()).await;
    // Exactly the 8 KiB limit without the terminating empty line: the server
    // consumes every byte we send, so its close cannot turn into a reset.
    let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    req.resize(8 * 1024, b'a');
    let res = http_exchange(ts.addr, &req).await;
    assert_eq!(res.status, 431, "{res:?}");
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let ts = echo_server(Config::default()).await;
    let extra: Vec<(String, String)> = (0..70).map(|i| (format!("x{i}"), "y".into())).collect();
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let res = http_exchange(ts.addr, upgrade_request("/", &extra).as_bytes()).await;
    assert_eq!(res.status, 431, "{res:?}");
}

#[tokio::test]
async fn header_limit_is_configurable() {
    let limits = wshub::proto::Limits::default().with_max_header_bytes(512);
    let ts = echo_server(Config::builder().limits(limits).build()).await;
    let filler = "v".repeat(600);
    let res = http_exchange(
        ts.addr,
        upgrade_request("/", &[("X-Filler", &filler)]).as_bytes(),
    )
    .await;
    assert_eq!(res.status, 431, "{res:?}");
    // A normal request still fits.
    RawClient::connect(ts.addr, "/").await;
}

#[tokio::test]
async fn post_gets_405() {
    let ts = echo_server(Config::default()).await;
    let req = upgrade_request("/", &[]).replacen("GET", "POST", 1);
    let res = http_exchange(ts.addr, req.as_bytes()).await;
    assert_eq!(res.status, 405, "{res:?}");
    assert!(res.body.contains("POST"), "{res:?}");
}

/// RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field in a
/// 405 response".
#[tokio::test]
async fn post_405_carries_allow_header() {
    let ts = echo_server(Config::default()).await;
    let req = upgrade_request("/", &[]).replacen("GET", "POST", 1);
    let res = http_exchange(ts.addr, req.as_bytes()).await;
    assert_eq!(res.status, 405, "{res:?}");
    assert_eq!(res.header("allow"), Some("GET"), "{res:?}");
}

#[tokio::test]
async fn http_1_0_gets_505() {
    let ts = echo_server(Config::default()).await;
    let req = upgrade_request("/", &[]).replacen("HTTP/1.1", "HTTP/1.0", 1);
    let res = http_exchange(ts.addr, req.as_bytes()).await;
    assert_eq!(res.status, 505, "{res:?}");
}

#[tokio::test]
async fn garbage_gets_400() {
    let ts = echo_server(Config::default()).await;
    let res = http_exchange(
        ts.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 400, "{res:?}");
}

/// What the check hook saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    query: Option<String>,
    origin: Option<String>,
    client_ip: std::net::IpAddr,
    token: Option<String>,
}

#[tokio::test]
async fn check_request_rejection_is_sent_with_its_status_and_body() {
    let server = Server::new(Config::default());
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let log = Arc::clone(&seen);
    server.check_request(move |req| {
        log.lock().unwrap().push(Seen {
            path: req.path.to_owned(),
            query: req.query.map(str::to_owned),
            origin: req.origin.map(str::to_owned),
            client_ip: req.client_ip,
            token: req.headers.get("x-token").map(str::to_owned),
        });
        match req.headers.get("x-token") {
            Some("secret") => Ok(()),
            _ => Err(Rejection::new(403, "forbidden: bad or missing token")),
        }
    });
    let ts = TestServer::start_server(server, echo).await;

    let req = upgrade_request(
        "/private?room=7",
        &[("Origin", "https://app.example"), ("X-Token", "wrong")],
    );
    let res = http_exchange(ts.addr, req.as_bytes()).await;
    assert_eq!(res.status, 403, "{res:?}");
    assert_eq!(res.body, "forbidden: bad or missing token\n");
    assert_eq!(
        res.header("content-length"),
        Some(res.body.len().to_string().as_str())
    );

    // The wshub client reports the status.
    let err = common::within("connect", wshub::client::connect(&ts.url("/private")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Handshake(HandshakeError::Status(403))),
        "{err:?}"
    );

    // The right token passes.
    let mut ok = common::within(
        "connect",
        ClientBuilder::new()
            .header("X-Token", "secret")
            .connect(&ts.url("/private?room=8")),
    )
    .await
    .unwrap();
    ok.send("hi").unwrap();
    assert_eq!(common::recv_text(&mut ok).await, "hi");

    let seen = seen.lock().unwrap().clone();
    let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        seen,
        vec![
            Seen {
                path: "/private".into(),
                query: Some("room=7".into()),
                origin: Some("https://app.example".into()),
                client_ip: localhost,
                token: Some("wrong".into()),
            },
            Seen {
                path: "/private".into(),
                query: None,
                origin: None,
                client_ip: localhost,
                token: None,
            },
            Seen {
                path: "/private".into(),
                query: Some("room=8".into()),
                origin: None,
                client_ip: localhost,
                token: Some("secret".into()),
            },
        ]
    );
}

#[tokio::test]
async fn check_request_not_run_for_invalid_upgrades() {
    let server = Server::new(Config::default());
    let calls = Arc::new(Mutex::new(0usize));
    let c = Arc::clone(&calls);
    server.check_request(move |_| {
        *c.lock().unwrap() += 1;
        Ok(())
    });
    let ts = TestServer::start_server(server, echo).await;
    let res = http_exchange(ts.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(res.status, 426);
    assert_eq!(*calls.lock().unwrap(), 0);
    RawClient::connect(ts.addr, "/").await;
    assert_eq!(*calls.lock().unwrap(), 1);
}

#[tokio::test]
async fn max_connections_reached_gets_503() {
    let (ts, mut sockets) =
        TestServer::start_channel(Config::builder().max_connections(1).build()).await;
    let first = common::connect(&ts.url("/")).await;
    let first_server = sockets.next().await; // registered now
    assert_eq!(ts.server.clients().len(), 1);

    let res = http_exchange(ts.addr, upgrade_request("/", &[]).as_bytes()).await;
    assert_eq!(res.status, 503, "{res:?}");
    assert!(res.body.contains("too many connections"), "{res:?}");

    let err = common::within("connect", wshub::client::connect(&ts.url("/")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Handshake(HandshakeError::Status(503))),
        "{err:?}"
    );

    // Once the first one is gone, there is room again. Its registry entry goes
    // after its handler finishes, so retry on 503 (each attempt is a real
    // exchange, not a timed wait).
    first.close(wshub::CloseCode::NORMAL, "").unwrap();
    common::closed(&first_server).await;
    drop(first_server);
    common::within("a free slot", async {
        loop {
            match wshub::client::connect(&ts.url("/")).await {
                Ok(ws) => break ws,
                Err(ConnectError::Handshake(HandshakeError::Status(503))) => {
                    tokio::task::yield_now().await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn require_protocol_rejects_clients_without_a_supported_one() {
    let ts = echo_server(
        Config::builder()
            .protocols(["chat.v2", "chat.v1"])
            .require_protocol(true)
            .build(),
    )
    .await;
    let res = http_exchange(ts.addr, upgrade_request("/", &[]).as_bytes()).await;
    assert_eq!(res.status, 400, "{res:?}");
    assert!(res.body.contains("no supported subprotocol"), "{res:?}");
    assert!(res.body.contains("chat.v2, chat.v1"), "{res:?}");

    let res = http_exchange(
        ts.addr,
        upgrade_request("/", &[("Sec-WebSocket-Protocol", "mqtt, stomp")]).as_bytes(),
    )
    .await;
    assert_eq!(res.status, 400, "{res:?}");

    let err = common::within(
        "connect",
        ClientBuilder::new()
            .protocols(["mqtt"])
            .connect(&ts.url("/")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ConnectError::Handshake(HandshakeError::Status(400))),
        "{err:?}"
    );

    let raw =
        RawClient::connect_with(ts.addr, "/", &[("Sec-WebSocket-Protocol", "mqtt, chat.v1")]).await;
    assert_eq!(
        raw.response.header("sec-websocket-protocol"),
        Some("chat.v1")
    );
}

#[tokio::test]
async fn idle_connection_is_dropped_after_handshake_timeout() {
    let ts = echo_server(
        Config::builder()
            .handshake_timeout(Duration::from_millis(200))
            .build(),
    )
    .await;
    // Sends nothing at all.
    let mut idle = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    let res = common::read_response_to_eof(&mut idle).await;
    assert_eq!(res.status, 408, "{res:?}");

    // Slowloris: half a request line, then nothing.
    let mut slow = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgr")
        .await
        .unwrap();
    let res = common::read_response_to_eof(&mut slow).await;
    assert_eq!(res.status, 408, "{res:?}");

    // Neither counts as a connection any more.
    assert_eq!(ts.server.clients().len(), 0);
}

#[tokio::test]
async fn eof_before_request_is_not_a_connection() {
    let ts = echo_server(Config::default()).await;
    let tcp = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    drop(tcp);
    // The server is unaffected.
    let mut ws = common::connect(&ts.url("/")).await;
    ws.send("still here").unwrap();
    assert_eq!(common::recv_text(&mut ws).await, "still here");
}

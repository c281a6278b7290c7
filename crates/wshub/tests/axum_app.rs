//! WebSocket inside an axum app on one port: a `GET /` handler taking
//! `Result<WebSocketUpgrade, Rejection>` answers JSON to plain HTTP and upgrades
//! WebSocket requests, served with `axum::serve(listener,
//! router.into_make_service_with_connect_info::<SocketAddr>())`. The client gets
//! "something" and can echo; the server's `clients()` sees the connection, with
//! the real peer address from `ConnectInfo`; a raw HTTP GET gets the JSON body;
//! subprotocol, deflate, `check_request`, trusted-proxy client IP and
//! `Server::shutdown` behave as with the standalone server; a bad upgrade gets
//! the same 426 as the standalone server would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::{http_exchange, http_request, upgrade_request, within};
use tokio::sync::oneshot;
use wshub::client::{ClientBuilder, ConnectError};
use wshub::client_ip::TrustedProxies;
use wshub::proto::handshake::HandshakeError;
use wshub::upgrade::WebSocketUpgrade;
use wshub::{CloseCode, Config, Disconnect, Rejection, Server};

async fn root(server: Server, upgrade: Result<WebSocketUpgrade, Rejection>) -> Response {
    match upgrade {
        Ok(ws) => ws.on_upgrade(&server, |mut ws| async move {
            ws.send("something").ok();
            ws.send(format!("peer {}", ws.peer_addr())).ok();
            ws.send(format!("ip {}", ws.client_ip())).ok();
            while let Some(m) = ws.recv().await {
                if ws.send(m).is_err() {
                    break;
                }
            }
        }),
        Err(_) => ([(CONTENT_TYPE, "application/json")], r#"{"msg":"hello"}"#).into_response(),
    }
}

struct App {
    addr: SocketAddr,
    server: Server,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_app(server: Server) -> App {
    let (listener, addr) = common::bind().await;
    let router = Router::new().route(
        "/",
        get({
            let server = server.clone();
            move |upgrade| root(server.clone(), upgrade)
        }),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
            s.shutdown().await;
        })
        .await
    });
    App {
        addr,
        server,
        stop: Some(stop),
        task,
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn websocket_and_json_on_one_port() {
    let app = start_app(Server::new(Config::default())).await;

    let mut ws = common::connect(&format!("ws://{}/", app.addr)).await;
    assert_eq!(common::recv_text(&mut ws).await, "something");
    // Registered before the handler ran.
    assert_eq!(app.server.clients().len(), 1);
    let peer = common::recv_text(&mut ws).await;
    let peer: SocketAddr = peer.strip_prefix("peer ").unwrap().parse().unwrap();
    assert_eq!(peer.ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    assert_ne!(peer.port(), 0, "ConnectInfo peer not used");
    assert_eq!(common::recv_text(&mut ws).await, "ip 127.0.0.1");
    ws.send("echo me").unwrap();
    assert_eq!(common::recv_text(&mut ws).await, "echo me");
    let server_side = app.server.clients().all();
    assert_eq!(server_side.len(), 1);
    assert_eq!(server_side[0].peer_addr(), peer);
    assert_eq!(server_side[0].path(), "/");

    // Plain HTTP on the same port gets the JSON.
    let res = http_exchange(
        app.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(json, serde_json::json!({"msg": "hello"}));

    // Broadcast reaches the axum-upgraded connection.
    assert_eq!(app.server.clients().broadcast("to all").queued, 1);
    assert_eq!(common::recv_text(&mut ws).await, "to all");
}

#[tokio::test]
async fn bad_upgrade_through_axum_gets_json_via_rejection_branch() {
    // `Result<WebSocketUpgrade, Rejection>` turns a bad upgrade into the JSON
    // branch of this app; the rejection itself is checked below.
    let app = start_app(Server::new(Config::default())).await;
    let req =
        upgrade_request("/", &[]).replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let res = http_request(app.addr, req.as_bytes()).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.body, r#"{"msg":"hello"}"#);
}

#[tokio::test]
async fn bare_extractor_rejects_like_the_standalone_server() {
    let server = Server::new(Config::default());
    let router = Router::new().route(
        "/ws",
        get({
            let server = server.clone();
            move |ws: WebSocketUpgrade| {
                let server = server.clone();
                async move { ws.on_upgrade(&server, common::echo) }
            }
        }),
    );
    let (listener, addr) = common::bind().await;
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let res = http_exchange(
        addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 426, "{res:?}");
    assert_eq!(res.header("upgrade"), Some("websocket"), "{res:?}");
    assert_eq!(res.header("sec-websocket-version"), Some("13"), "{res:?}");
    let req = upgrade_request("/ws", &[])
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let mut req = req.into_bytes();
    // axum keeps the connection alive: ask it to close after the answer.
    req.truncate(req.len() - 2);
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    let res = http_exchange(addr, &req).await;
    assert_eq!(res.status, 426, "{res:?}");
    assert_eq!(res.header("sec-websocket-version"), Some("13"), "{res:?}");
    let mut ws = common::connect(&format!("ws://{addr}/ws")).await;
    ws.send("ok").unwrap();
    assert_eq!(common::recv_text(&mut ws).await, "ok");
    task.abort();
}

#[tokio::test]
async fn negotiation_check_and_client_ip_through_axum() {
    let config = Config::builder()
        .protocols(["chat"])
        .deflate(true)
        .trusted_proxies(TrustedProxies::loopback())
        .build();
    let server = Server::new(config);
    server.check_request(|req| {
        if req.query == Some("token=ok") {
            Ok(())
        } else {
            Err(Rejection::new(403, "no token"))
        }
    });
    let app = start_app(server).await;

    let err = within(
        "connect",
        wshub::client::connect(&format!("ws://{}/", app.addr)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ConnectError::Handshake(HandshakeError::Status(403))),
        "{err:?}"
    );
    let res = http_request(app.addr, upgrade_request("/", &[]).as_bytes()).await;
    assert_eq!(res.status, 403, "{res:?}");
    assert_eq!(res.body, "no token\n");

    let mut ws = within(
        "connect",
        ClientBuilder::new()
            .protocols(["other", "chat"])
            .deflate(true)
            .header("X-Forwarded-For", "203.0.113.7")
            .connect(&format!("ws://{}/?token=ok", app.addr)),
    )
    .await
    .unwrap();
    assert_eq!(ws.protocol(), Some("chat"));
    assert!(ws.is_compressed());
    assert_eq!(common::recv_text(&mut ws).await, "something");
    let _peer = common::recv_text(&mut ws).await;
    assert_eq!(common::recv_text(&mut ws).await, "ip 203.0.113.7");
    let big = "compress me ".repeat(10_000);
    ws.send(big.clone()).unwrap();
    assert_eq!(common::recv_text(&mut ws).await, big);
    let server_side = &app.server.clients().all()[0];
    assert!(server_side.is_compressed());
    assert_eq!(server_side.protocol(), Some("chat"));
    assert_eq!(server_side.query(), Some("token=ok"));
}

#[tokio::test]
async fn graceful_shutdown_closes_upgraded_connections() {
    let mut app = start_app(Server::new(Config::default())).await;
    let mut ws = common::connect(&format!("ws://{}/", app.addr)).await;
    assert_eq!(common::recv_text(&mut ws).await, "something");
    app.stop.take().unwrap().send(()).unwrap();
    let rest = common::recv_until_end(&mut ws).await;
    assert_eq!(rest.len(), 2, "{rest:?}"); // "peer …", "ip …"
    assert_eq!(
        common::closed(&ws).await,
        Disconnect::Closed {
            code: CloseCode::GOING_AWAY,
            reason: "server shutting down".into(),
            by_peer: true
        }
    );
    let task = std::mem::replace(&mut app.task, tokio::spawn(async { Ok(()) }));
    within("axum::serve to return", task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app.server.active_connections(), 0);
    assert!(tokio::net::TcpStream::connect(app.addr).await.is_err());
}

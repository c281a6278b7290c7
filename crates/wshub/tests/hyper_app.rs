//! WebSocket inside a plain hyper 1.x app: an accept loop serving each TCP
//! connection with `http1::Builder::new().serve_connection(io, service)
//! .with_upgrades()`, whose service calls `wshub::upgrade::upgrade(&server, &mut
//! req, Some(peer), handler)` for upgrade requests and answers plain HTTP
//! itself. Covers: echo, the peer address, the registry, a frame pipelined
//! right behind the upgrade request, rejections (426 with its headers, 403 from
//! `check_request`), plain HTTP next to it, `Server::shutdown`, and
//! `max_connections` under simultaneous upgrades.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::{http_request, upgrade_request, within, RawClient};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use wshub::{CloseCode, Config, Rejection, Server, WebSocket};

/// Starts the accept loop; returns the address and the loop's task.
async fn start<H, F>(server: Server, handler: H) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    H: Fn(WebSocket) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    start_on(server, handler, false).await
}

/// A transport hyper serves that is not a bare `TcpStream`: wshub cannot take
/// it back out of hyper's `Upgraded`, so its connections run through it.
struct Wrapped(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Wrapped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Wrapped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// [`start`], serving each connection as a [`Wrapped`] one when `wrapped`.
async fn start_on<H, F>(
    server: Server,
    handler: H,
    wrapped: bool,
) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    H: Fn(WebSocket) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (listener, addr) = common::bind().await;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let server = server.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    let server = server.clone();
                    let handler = handler.clone();
                    async move {
                        let res = if wshub::upgrade::is_upgrade_request(&req)
                            || req.uri().path() == "/ws"
                        {
                            wshub::upgrade::upgrade(&server, &mut req, Some(peer), handler)
                        } else {
                            http::Response::new(Full::new(Bytes::from_static(b"plain http")))
                        };
                        Ok::<_, Infallible>(res)
                    }
                });
                let http = http1::Builder::new();
                let _ = if wrapped {
                    http.serve_connection(TokioIo::new(Wrapped(tcp)), service)
                        .with_upgrades()
                        .await
                } else {
                    http.serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await
                };
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn echo_through_hyper() {
    let server = Server::new(Config::default());
    let (addr, task) = start(server.clone(), common::echo).await;
    let mut ws = common::connect(&format!("ws://{addr}/ws?a=1")).await;
    for i in 0..100 {
        ws.send(format!("m{i}")).unwrap();
    }
    for i in 0..100 {
        assert_eq!(common::recv_text(&mut ws).await, format!("m{i}"));
    }
    let big = vec![9u8; 1 << 20];
    ws.send(big.clone()).unwrap();
    assert_eq!(
        common::recv(&mut ws).await,
        wshub::Message::Binary(big.into())
    );

    let all = server.clients().all();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].path(), all[0].query()), ("/ws", Some("a=1")));
    assert_eq!(
        all[0].peer_addr().ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_ne!(all[0].peer_addr().port(), 0);

    ws.close(CloseCode::NORMAL, "").unwrap();
    assert!(common::recv_until_end(&mut ws).await.is_empty());
    task.abort();
}

/// Over a `TcpStream`, wshub takes the socket and hyper's read-ahead back out
/// of `Upgraded`; over any other transport it runs through `Upgraded`. Both
/// must deliver a frame hyper read along with the request.
#[tokio::test]
async fn raw_client_peer_addr_and_pipelined_frame_through_hyper() {
    peer_addr_and_pipelined_frame(false).await;
}

#[tokio::test]
async fn pipelined_frame_through_hyper_on_another_transport() {
    peer_addr_and_pipelined_frame(true).await;
}

async fn peer_addr_and_pipelined_frame(wrapped: bool) {
    let server = Server::new(Config::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ws.peer_addr());
            common::echo(ws).await;
        }
    };
    let (addr, task) = start_on(server.clone(), handler, wrapped).await;
    // Upgrade request and a first frame in one write: hyper must hand the
    // frame bytes it already read to the WebSocket.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let mut bytes = upgrade_request("/ws", &[]).into_bytes();
    bytes.extend(common::encode_frame(
        true,
        common::op::TEXT,
        b"early",
        Some(common::MASK),
    ));
    let mut io = tokio::io::BufReader::new(tcp);
    io.write_all(&bytes).await.unwrap();
    let head = common::read_head(&mut io).await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("sec-websocket-accept"), Some(common::ACCEPT));
    let mut raw = RawClient { io, response: head };
    assert_eq!(within("peer", rx.recv()).await.unwrap(), local);
    let f = raw.expect_frame().await;
    assert_eq!(f.payload, b"early");
    // And the connection goes on after the hand-over.
    raw.send_text("later").await;
    assert_eq!(raw.expect_frame().await.payload, b"later");
    task.abort();
}

#[tokio::test]
async fn rejections_and_plain_http_through_hyper() {
    let server = Server::new(Config::default());
    server.check_request(|req| {
        if req.path == "/ws" && req.query == Some("deny") {
            Err(Rejection::new(403, "denied"))
        } else {
            Ok(())
        }
    });
    let (addr, task) = start(server, common::echo).await;

    let res = http_request(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((res.status, res.body.as_str()), (200, "plain http"));

    // Not an upgrade, on the WebSocket route: 426 with its headers.
    let res = http_request(addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(res.status, 426, "{res:?}");
    assert_eq!(res.header("upgrade"), Some("websocket"));
    assert_eq!(res.header("sec-websocket-version"), Some("13"));

    let res = http_request(addr, upgrade_request("/ws?deny", &[]).as_bytes()).await;
    assert_eq!((res.status, res.body.as_str()), (403, "denied\n"));

    let req = upgrade_request("/ws", &[]).replace(common::KEY, "short");
    let res = http_request(addr, req.as_bytes()).await;
    assert_eq!(res.status, 400, "{res:?}");
    task.abort();
}

#[tokio::test]
async fn server_shutdown_reaches_hyper_upgraded_connections() {
    let server = Server::new(Config::default());
    let (addr, task) = start(server.clone(), common::echo).await;
    let mut ws = common::connect(&format!("ws://{addr}/ws")).await;
    ws.send("x").unwrap();
    assert_eq!(common::recv_text(&mut ws).await, "x");
    let ((), rest) = tokio::join!(
        async { within("shutdown", server.shutdown()).await },
        common::recv_until_end(&mut ws)
    );
    assert!(rest.is_empty());
    assert_eq!(common::closed(&ws).await.code(), CloseCode::GOING_AWAY);
    assert_eq!(server.active_connections(), 0);
    let res = http_request(addr, upgrade_request("/ws", &[]).as_bytes()).await;
    assert_eq!(res.status, 503, "{res:?}");
    task.abort();
}

/// `max_connections(1)` with two upgrade requests arriving together. The limit
/// is checked (`accept_upgrade`: `clients.len() >= max`) when the 101 is
/// prepared, but the connection only joins the registry after hyper has
/// written the 101 and handed the socket over, so both requests pass the
/// check.
#[tokio::test]
async fn max_connections_holds_under_simultaneous_upgrades() {
    let server = Server::new(Config::builder().max_connections(1).build());
    let (addr, task) = start(server.clone(), common::echo).await;
    let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = upgrade_request("/ws", &[]);
    a.write_all(req.as_bytes()).await.unwrap();
    b.write_all(req.as_bytes()).await.unwrap();
    let mut a = tokio::io::BufReader::new(a);
    let mut b = tokio::io::BufReader::new(b);
    let ra = within("response a", common::read_head(&mut a)).await;
    let rb = within("response b", common::read_head(&mut b)).await;
    let statuses = [ra.status, rb.status];
    assert!(
        statuses.contains(&503),
        "both simultaneous upgrades were accepted with max_connections(1): {statuses:?} \
         (clients now: {})",
        server.clients().len()
    );
    task.abort();
}

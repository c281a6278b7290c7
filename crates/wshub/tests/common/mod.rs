//! Shared helpers for the integration tests: a [`TestServer`] on `127.0.0.1:0`
//! with a oneshot shutdown, a handler that hands every server-side
//! [`WebSocket`] to the test, and a raw-TCP WebSocket client ([`RawClient`]) that
//! can misbehave (not read, not answer pings, send unmasked frames).
//!
//! Nothing here sleeps: every wait is on a real event, wrapped in [`within`] so
//! that a missing event fails the test instead of hanging it.

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wshub::{Config, Message, Server, WebSocket};

/// Upper bound for any single wait: only a guard against hangs, never a
/// measurement.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test with `what` if it does not finish within
/// [`HANG_GUARD`].
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Binds `127.0.0.1:0`.
pub(crate) async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A running [`Server::serve`] on an ephemeral loopback port.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) server: Server,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    /// Starts `Server::new(config)` with `handler`.
    pub(crate) async fn start<H, F>(config: Config, handler: H) -> TestServer
    where
        H: Fn(WebSocket) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        TestServer::start_server(Server::new(config), handler).await
    }

    /// Starts an already built `server` (e.g. with TLS or a request check).
    pub(crate) async fn start_server<H, F>(server: Server, handler: H) -> TestServer
    where
        H: Fn(WebSocket) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (listener, addr) = bind().await;
        let (tx, rx) = oneshot::channel::<()>();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.serve(listener, handler, async move {
                let _ = rx.await;
            })
            .await
        });
        TestServer {
            addr,
            server,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a server whose handler sends every new server-side WebSocket to
    /// the returned channel and returns at once (the test then owns the handle).
    pub(crate) async fn start_channel(config: Config) -> (TestServer, Sockets) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ts = TestServer::start(config, move |ws| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(ws);
            }
        })
        .await;
        (ts, Sockets(rx))
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Resolves the shutdown future and waits for `serve` to return.
    pub(crate) async fn stop(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("serve task");
        within("serve to return", task)
            .await
            .expect("serve task panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The server-side sockets handed over by [`TestServer::start_channel`].
pub(crate) struct Sockets(pub(crate) mpsc::UnboundedReceiver<WebSocket>);

impl Sockets {
    /// The next accepted server-side WebSocket. When it is returned, the
    /// connection is registered in `server.clients()`.
    pub(crate) async fn next(&mut self) -> WebSocket {
        within("the server-side socket", self.0.recv())
            .await
            .expect("handler channel closed")
    }
}

/// Echoes every message back (the classic echo handler).
pub(crate) async fn echo(mut ws: WebSocket) {
    while let Some(m) = ws.recv().await {
        if ws.send(m).is_err() {
            break;
        }
    }
}

/// Connects the wshub client with default options.
pub(crate) async fn connect(url: &str) -> WebSocket {
    within("client connect", wshub::client::connect(url))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Receives the next message on `ws` (panics on end or hang).
pub(crate) async fn recv(ws: &mut WebSocket) -> Message {
    within("a message", ws.recv())
        .await
        .expect("connection ended while a message was expected")
}

/// Receives the next message and returns it as text.
pub(crate) async fn recv_text(ws: &mut WebSocket) -> String {
    match recv(ws).await {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Receives until the connection ends; returns what came before.
pub(crate) async fn recv_until_end(ws: &mut WebSocket) -> Vec<Message> {
    let mut out = Vec::new();
    within("the end of the connection", async {
        while let Some(m) = ws.recv().await {
            out.push(m);
        }
    })
    .await;
    out
}

/// Waits for `ws` to end and returns why.
pub(crate) async fn closed(ws: &WebSocket) -> wshub::Disconnect {
    within("the connection to end", ws.closed()).await
}

// ------------------------------------------------------------------ raw HTTP

/// The RFC 6455 sample key and its accept value.
pub(crate) const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub(crate) const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A valid upgrade request for `path` with `extra` headers appended.
pub(crate) fn upgrade_request(path: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (n, v) in extra {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// An HTTP response as read off the wire.
#[derive(Debug, Clone)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn parse(raw: &[u8]) -> HttpResponse {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete HTTP response head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        HttpResponse {
            status,
            headers,
            body: body.to_owned(),
        }
    }
}

/// Writes `request` on a fresh connection and reads the response until the
/// server closes the connection (a reset after the response is tolerated).
pub(crate) async fn http_exchange(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    read_response_to_eof(&mut tcp).await
}

/// Writes `request` on a fresh connection and reads one response head plus a
/// `Content-Length` body, without waiting for the connection to close (for
/// keep-alive servers such as hyper and axum).
pub(crate) async fn http_request(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut io = BufReader::new(tcp);
    io.write_all(request).await.unwrap();
    within("the HTTP response", async {
        let mut res = read_head(&mut io).await;
        let len: usize = res
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await.unwrap();
        res.body = String::from_utf8(body).unwrap();
        res
    })
    .await
}

/// Reads everything until EOF (or a reset) and parses it as one response.
pub(crate) async fn read_response_to_eof(tcp: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    within("the HTTP response", async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    HttpResponse::parse(&raw)
}

// ------------------------------------------------------------------ raw WebSocket

/// Frame opcodes.
pub(crate) mod op {
    pub(crate) const CONT: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// One frame as received by the raw client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    pub(crate) rsv1: bool,
    pub(crate) opcode: u8,
    pub(crate) masked: bool,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame.
    pub(crate) fn close_code(&self) -> Option<u16> {
        (self.opcode == op::CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The reason of a close frame.
    pub(crate) fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }
}

/// Encodes one frame; `mask` set means masked (as a client must).
pub(crate) fn encode_frame(
    fin: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The mask key the raw client uses.
pub(crate) const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A WebSocket client on a plain `TcpStream`, speaking frames by hand.
pub(crate) struct RawClient {
    pub(crate) io: BufReader<TcpStream>,
    /// Headers of the 101 response.
    pub(crate) response: HttpResponse,
}

impl RawClient {
    /// Connects and completes the handshake for `path`.
    pub(crate) async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        RawClient::connect_with(addr, path, &[]).await
    }

    /// Connects and completes the handshake for `path` with `extra` headers.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        path: &str,
        extra: &[(&str, &str)],
    ) -> RawClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        RawClient::handshake(tcp, path, extra).await
    }

    /// Completes the handshake on an already connected stream.
    pub(crate) async fn handshake(tcp: TcpStream, path: &str, extra: &[(&str, &str)]) -> RawClient {
        let mut io = BufReader::new(tcp);
        io.write_all(upgrade_request(path, extra).as_bytes())
            .await
            .unwrap();
        let response = within("the 101 response", read_head(&mut io)).await;
        assert_eq!(response.status, 101, "upgrade refused: {response:?}");
        assert_eq!(response.header("sec-websocket-accept"), Some(ACCEPT));
        RawClient { io, response }
    }

    /// The local address of the TCP connection.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.io.get_ref().local_addr().unwrap()
    }

    /// Sends one frame (masked with [`MASK`] when `masked`).
    pub(crate) async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let bytes = encode_frame(fin, opcode, payload, masked.then_some(MASK));
        self.io.write_all(&bytes).await.unwrap();
    }

    /// Sends a masked text frame.
    pub(crate) async fn send_text(&mut self, text: &str) {
        self.send_frame(true, op::TEXT, text.as_bytes(), true).await;
    }

    /// Sends a masked close frame with `code` and `reason`.
    pub(crate) async fn send_close(&mut self, code: u16, reason: &str) {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        self.send_frame(true, op::CLOSE, &p, true).await;
    }

    /// Reads one frame; `Ok(None)` on a clean EOF before a frame starts.
    pub(crate) async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        let mut h = [0u8; 2];
        match self.io.read_exact(&mut h[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        self.io.read_exact(&mut h[1..]).await?;
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7F {
            126 => u64::from(self.io.read_u16().await?),
            127 => self.io.read_u64().await?,
            n => u64::from(n),
        };
        let mut key = [0u8; 4];
        if masked {
            self.io.read_exact(&mut key).await?;
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        self.io.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Ok(Some(Frame {
            fin: h[0] & 0x80 != 0,
            rsv1: h[0] & 0x40 != 0,
            opcode: h[0] & 0x0F,
            masked,
            payload,
        }))
    }

    /// Reads the next frame, failing the test on EOF, error or hang.
    pub(crate) async fn expect_frame(&mut self) -> Frame {
        within("a frame from the server", self.read_frame())
            .await
            .expect("read error")
            .expect("EOF while a frame was expected")
    }

    /// Reads frames until EOF (or a reset); returns them.
    pub(crate) async fn frames_until_eof(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        within("EOF from the server", async {
            while let Ok(Some(f)) = self.read_frame().await {
                frames.push(f);
            }
        })
        .await;
        frames
    }
}

/// Reads an HTTP response head (status line and headers) without reading past
/// the empty line.
pub(crate) async fn read_head(io: &mut BufReader<TcpStream>) -> HttpResponse {
    let mut raw = Vec::new();
    loop {
        let n = io.read_until(b'\n', &mut raw).await.unwrap();
        assert!(n > 0, "EOF inside the response head: {raw:?}");
        if raw.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    HttpResponse::parse(&raw)
}

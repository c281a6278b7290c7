//! wss:// end to end: an rcgen self-signed certificate for `localhost` and
//! `127.0.0.1` → `wshub::tls::server_config_from_pem` → `Server::with_tls`; the
//! wshub client trusts exactly that certificate (rustls `RootCertStore`, ring
//! provider) and echoes text, binary and 1 MiB messages, with and without
//! permessage-deflate, by IP and by host name. Also: the connection info over
//! TLS, an untrusted certificate, `wss://` without a TLS config, a plain `ws://`
//! client against the TLS port, and a TCP client that never starts TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{echo, TestServer};
use wshub::client::{ClientBuilder, ConnectError};
use wshub::{Config, Message, Server};

struct Pki {
    cert_pem: String,
    key_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
}

fn self_signed() -> Pki {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    Pki {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        cert_der: ck.cert.der().clone(),
    }
}

fn client_tls(trusted: &rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

async fn tls_server(config: Config, pki: &Pki) -> TestServer {
    let tls = wshub::tls::server_config_from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
        .unwrap();
    TestServer::start_server(Server::with_tls(config, tls), echo).await
}

async fn echo_over_wss(deflate: bool, host: &str) {
    let pki = self_signed();
    let ts = tls_server(Config::builder().deflate(deflate).build(), &pki).await;
    let url = format!("wss://{host}:{}/secure?x=1", ts.addr.port());
    let mut ws = common::within(
        "wss connect",
        ClientBuilder::new()
            .tls_config(client_tls(&pki.cert_der))
            .deflate(deflate)
            .connect(&url),
    )
    .await
    .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(ws.is_compressed(), deflate);
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 253) as u8).collect();
    let msgs = [
        Message::from("hello over tls"),
        Message::Binary(vec![1u8, 2, 3].into()),
        Message::from(""),
        Message::Binary(big.into()),
        Message::from("x".repeat(100_000)),
    ];
    for m in msgs {
        ws.send(m.clone()).unwrap();
        assert_eq!(common::recv(&mut ws).await, m);
    }
    for i in 0..500 {
        ws.send(format!("n{i}")).unwrap();
    }
    for i in 0..500 {
        assert_eq!(common::recv_text(&mut ws).await, format!("n{i}"));
    }
    ws.close(wshub::CloseCode::NORMAL, "").unwrap();
    assert!(common::recv_until_end(&mut ws).await.is_empty());
    assert!(matches!(
        common::closed(&ws).await,
        wshub::Disconnect::Closed {
            code: wshub::CloseCode::NORMAL,
            ..
        }
    ));
}

#[tokio::test]
async fn wss_echo_by_ip() {
    echo_over_wss(false, "127.0.0.1").await;
}

#[tokio::test]
async fn wss_echo_by_ip_with_deflate() {
    echo_over_wss(true, "127.0.0.1").await;
}

#[tokio::test]
async fn wss_echo_by_host_name() {
    // `localhost` may resolve to ::1 first; the client tries each address.
    echo_over_wss(false, "localhost").await;
}

#[tokio::test]
async fn wss_connection_info() {
    let pki = self_signed();
    let tls = wshub::tls::server_config_from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ts = TestServer::start_server(
        Server::with_tls(Config::builder().protocols(["p"]).build(), tls),
        move |ws| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(ws);
            }
        },
    )
    .await;
    let _client = common::within(
        "wss connect",
        ClientBuilder::new()
            .tls_config(client_tls(&pki.cert_der))
            .protocols(["p"])
            .header("X-Over", "tls")
            .connect(&format!("wss://127.0.0.1:{}/room?id=3", ts.addr.port())),
    )
    .await
    .unwrap();
    let ws = common::within("socket", rx.recv()).await.unwrap();
    assert_eq!(
        (ws.path(), ws.query(), ws.protocol()),
        ("/room", Some("id=3"), Some("p"))
    );
    assert_eq!(ws.headers().unwrap().get("x-over").unwrap(), "tls");
    assert_eq!(
        ws.client_ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(ts.server.clients().len(), 1);
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let pki = self_signed();
    let other = self_signed();
    let ts = tls_server(Config::default(), &pki).await;
    let err = common::within(
        "wss connect",
        ClientBuilder::new()
            .tls_config(client_tls(&other.cert_der))
            .connect(&format!("wss://127.0.0.1:{}/", ts.addr.port())),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err:?}");
    // The server is fine afterwards.
    let mut ok = common::within(
        "wss connect",
        ClientBuilder::new()
            .tls_config(client_tls(&pki.cert_der))
            .connect(&format!("wss://127.0.0.1:{}/", ts.addr.port())),
    )
    .await
    .unwrap();
    ok.send("fine").unwrap();
    assert_eq!(common::recv_text(&mut ok).await, "fine");
}

#[tokio::test]
async fn wss_without_tls_config_fails() {
    let pki = self_signed();
    let ts = tls_server(Config::default(), &pki).await;
    let err = wshub::client::connect(&format!("wss://127.0.0.1:{}/", ts.addr.port()))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn plain_client_against_tls_port_fails() {
    let pki = self_signed();
    let ts = tls_server(Config::default(), &pki).await;
    let res = common::within(
        "ws connect",
        wshub::client::connect(&format!("ws://127.0.0.1:{}/", ts.addr.port())),
    )
    .await;
    assert!(
        res.is_err(),
        "a plain upgrade must not succeed on the TLS port"
    );
}

#[tokio::test]
async fn tcp_client_that_never_starts_tls_is_dropped() {
    let pki = self_signed();
    let ts = tls_server(
        Config::builder()
            .handshake_timeout(Duration::from_millis(200))
            .build(),
        &pki,
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = common::within("the server to drop us", async {
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await
    })
    .await;
    // EOF or reset, without any data.
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

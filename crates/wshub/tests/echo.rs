//! Echo over real loopback sockets between `Server::serve` and the wshub client:
//! text, binary, empty, 1 MiB and many small messages in order, each with and
//! without permessage-deflate (asserting `is_compressed()` on both ends), a
//! mixed-size stream under compression, and a frame pipelined in the same TCP
//! write as the upgrade request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{connect, echo, recv, RawClient, TestServer};
use wshub::client::ClientBuilder;
use wshub::{Config, Message};

/// 1 MiB of `seed`-dependent bytes; `compressible` repeats a short pattern.
fn payload(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    if compressible {
        return b"wshub compressible payload / "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect();
    }
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: incompressible enough for deflate.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn roundtrip(ws: &mut wshub::WebSocket, msg: Message) {
    ws.send(msg.clone()).unwrap();
    let got = recv(ws).await;
    assert_eq!(
        got,
        msg,
        "echo differs (len {} vs {})",
        got.len(),
        msg.len()
    );
}

async fn echo_suite(deflate: bool) {
    let (ts, mut sockets) =
        TestServer::start_channel(Config::builder().deflate(deflate).build()).await;
    let mut client = common::within(
        "connect",
        ClientBuilder::new()
            .deflate(deflate)
            .connect(&ts.url("/echo")),
    )
    .await
    .unwrap();
    let server_ws = sockets.next().await;
    assert_eq!(client.is_compressed(), deflate, "client side");
    assert_eq!(server_ws.is_compressed(), deflate, "server side");
    tokio::spawn(echo(server_ws));

    roundtrip(&mut client, Message::from("hello")).await;
    roundtrip(&mut client, Message::from("héllo wörld ✓ 🦀")).await;
    roundtrip(&mut client, Message::Binary(vec![0u8, 1, 2, 255].into())).await;
    roundtrip(&mut client, Message::from("")).await;
    roundtrip(&mut client, Message::Binary(Vec::new().into())).await;

    let big_text = String::from_utf8(payload(1 << 20, 0, true)).unwrap();
    roundtrip(&mut client, Message::from(big_text)).await;
    roundtrip(
        &mut client,
        Message::Binary(payload(1 << 20, 7, false).into()),
    )
    .await;
    roundtrip(
        &mut client,
        Message::Binary(payload(1 << 20, 0, true).into()),
    )
    .await;

    // Many messages queued back to back come back complete and in order.
    const N: usize = 2000;
    for i in 0..N {
        let m = if i % 3 == 0 {
            Message::Binary(format!("bin {i}").into_bytes().into())
        } else {
            // Every third text is long enough to be compressed.
            Message::from(format!("text {i} {}", "x".repeat(i % 200)))
        };
        client.send(m).unwrap();
    }
    for i in 0..N {
        let got = recv(&mut client).await;
        let want = if i % 3 == 0 {
            Message::Binary(format!("bin {i}").into_bytes().into())
        } else {
            Message::from(format!("text {i} {}", "x".repeat(i % 200)))
        };
        assert_eq!(got, want, "message {i}");
    }

    client.close(wshub::CloseCode::NORMAL, "done").unwrap();
    assert!(common::recv_until_end(&mut client).await.is_empty());
    drop(ts);
}

#[tokio::test]
async fn echo_plain() {
    echo_suite(false).await;
}

#[tokio::test]
async fn echo_permessage_deflate() {
    echo_suite(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_permessage_deflate_multi_thread() {
    echo_suite(true).await;
}

#[tokio::test]
async fn deflate_only_when_both_sides_want_it() {
    // Server on, client off.
    let (ts, mut sockets) =
        TestServer::start_channel(Config::builder().deflate(true).build()).await;
    let mut client = connect(&ts.url("/")).await;
    let server_ws = sockets.next().await;
    assert!(!client.is_compressed());
    assert!(!server_ws.is_compressed());
    tokio::spawn(echo(server_ws));
    roundtrip(&mut client, Message::from("a".repeat(10_000))).await;

    // Client on, server off.
    let (ts2, mut sockets2) = TestServer::start_channel(Config::default()).await;
    let mut client2 = common::within(
        "connect",
        ClientBuilder::new().deflate(true).connect(&ts2.url("/")),
    )
    .await
    .unwrap();
    let server_ws2 = sockets2.next().await;
    assert!(!client2.is_compressed());
    assert!(!server_ws2.is_compressed());
    tokio::spawn(echo(server_ws2));
    roundtrip(&mut client2, Message::from("b".repeat(10_000))).await;
}

#[tokio::test]
async fn echo_handler_with_fn_item() {
    let ts = TestServer::start(Config::default(), echo).await;
    let mut client = connect(&ts.url("/")).await;
    for i in 0..10 {
        roundtrip(&mut client, Message::from(format!("m{i}"))).await;
    }
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn frame_pipelined_with_upgrade_request_is_delivered() {
    let ts = TestServer::start(Config::default(), echo).await;
    // The upgrade request and a first masked text frame in one TCP write.
    let mut bytes = common::upgrade_request("/", &[]).into_bytes();
    bytes.extend(common::encode_frame(
        true,
        common::op::TEXT,
        b"early bird",
        Some(common::MASK),
    ));
    let mut tcp = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &bytes)
        .await
        .unwrap();
    let mut io = tokio::io::BufReader::new(tcp);
    let head = common::read_head(&mut io).await;
    assert_eq!(head.status, 101);
    let mut raw = RawClient { io, response: head };
    let f = raw.expect_frame().await;
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (common::op::TEXT, &b"early bird"[..])
    );
    assert!(!f.masked, "server frames must not be masked");
}

#[tokio::test]
async fn fragmented_message_from_raw_client_is_reassembled() {
    let ts = TestServer::start(Config::default(), echo).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    raw.send_frame(false, common::op::TEXT, b"frag", true).await;
    // A ping in the middle of a fragmented message is answered at once.
    raw.send_frame(true, common::op::PING, b"p", true).await;
    raw.send_frame(false, common::op::CONT, b"men", true).await;
    raw.send_frame(true, common::op::CONT, b"ted", true).await;
    let pong = raw.expect_frame().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (common::op::PONG, &b"p"[..])
    );
    let f = raw.expect_frame().await;
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (common::op::TEXT, &b"fragmented"[..])
    );
    assert!(f.fin);
}

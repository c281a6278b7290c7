//! Slow consumers: a raw client with a small receive buffer that never reads
//! while the server floods it. `SlowConsumerPolicy::Close` → the server's send
//! returns `SendError::SlowConsumer`, the connection ends (`SlowConsumer` or
//! `WriteStalled`) and broadcast reports it as `slow`; `DropOldest` → sends keep
//! succeeding, `dropped_messages()` counts the drops, the survivors arrive in
//! order, and the newest message is the one that survives. Data volumes are
//! kept small (64 KiB queues, a 4 KiB client receive buffer).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{RawClient, TestServer};
use tokio::net::TcpSocket;
use wshub::{Config, Disconnect, SendError, SlowConsumerPolicy, WebSocket};

const QUEUE: usize = 64 * 1024;
const MSG: usize = 1024;

/// A raw client whose socket has a tiny receive buffer, so the kernel absorbs
/// little of the flood.
async fn stubborn_client(addr: SocketAddr) -> RawClient {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    RawClient::handshake(tcp, "/", &[]).await
}

/// A message of `MSG` bytes starting with its sequence number.
fn numbered(i: u64) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.resize(MSG, b'.');
    v
}

/// Sends numbered messages, yielding after each so the driver can write, until
/// a send fails or `max` were sent. Returns how many succeeded and the error.
async fn flood(ws: &WebSocket, max: u64) -> (u64, Option<SendError>) {
    for i in 0..max {
        if let Err(e) = ws.send(numbered(i)) {
            return (i, Some(e));
        }
        tokio::task::yield_now().await;
    }
    (max, None)
}

#[tokio::test]
async fn close_policy_reports_slow_consumer_and_ends_the_connection() {
    let config = Config::builder()
        .max_queue_bytes(QUEUE)
        .slow_consumer(SlowConsumerPolicy::Close)
        .write_stall_timeout(Duration::from_millis(200))
        .close_timeout(Duration::from_millis(200))
        .build();
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let _raw = stubborn_client(ts.addr).await;
    let ws = sockets.next().await;

    // Bounded: the kernel buffers plus the queue hold a few MiB at most.
    let (sent, err) = common::within("the flood to overflow", flood(&ws, 100_000)).await;
    assert_eq!(err, Some(SendError::SlowConsumer), "after {sent} messages");
    assert!(!ws.is_open());
    assert_eq!(ws.send("more"), Err(SendError::Closed));
    let why = common::closed(&ws).await;
    assert!(
        matches!(why, Disconnect::SlowConsumer | Disconnect::WriteStalled),
        "{why:?}"
    );
}

#[tokio::test]
async fn broadcast_reports_the_slow_receiver() {
    let config = Config::builder()
        .max_queue_bytes(QUEUE)
        .write_stall_timeout(Duration::from_millis(200))
        .build();
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let _raw = stubborn_client(ts.addr).await;
    let slow_ws = sockets.next().await;
    let mut fast = common::connect(&ts.url("/")).await;
    let _fast_ws = sockets.next().await;

    let clients = ts.server.clients().clone();
    let mut saw_slow = None;
    for i in 0..100_000u64 {
        let r = clients.broadcast(numbered(i));
        // The fast client keeps up.
        let m = common::recv(&mut fast).await;
        assert_eq!(m.payload()[..8], i.to_be_bytes());
        if r.slow > 0 {
            assert_eq!((r.slow, r.queued), (1, 1), "{r:?}");
            saw_slow = Some(i);
            break;
        }
    }
    assert!(saw_slow.is_some(), "the stubborn client never overflowed");
    // Later broadcasts count it as closed, until it leaves the registry.
    let r = clients.broadcast("after");
    assert_eq!(r.queued, 1);
    assert_eq!(r.slow, 0);
    let why = common::closed(&slow_ws).await;
    assert!(
        matches!(why, Disconnect::SlowConsumer | Disconnect::WriteStalled),
        "{why:?}"
    );
}

#[tokio::test]
async fn slow_consumer_that_reads_later_sees_close_4001() {
    let config = Config::builder()
        .max_queue_bytes(QUEUE)
        .slow_consumer(SlowConsumerPolicy::Close)
        .write_stall_timeout(Duration::from_secs(60))
        .close_timeout(Duration::from_secs(60))
        .build();
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let mut raw = stubborn_client(ts.addr).await;
    let ws = sockets.next().await;
    let (sent, err) = common::within("the flood to overflow", flood(&ws, 100_000)).await;
    assert_eq!(err, Some(SendError::SlowConsumer));
    // Now read: data frames in order (the tail was discarded), then close 4001.
    let mut last = None;
    let close = loop {
        let f = raw.expect_frame().await;
        if f.opcode == common::op::CLOSE {
            break f;
        }
        let seq = u64::from_be_bytes(f.payload[..8].try_into().unwrap());
        assert!(last.is_none_or(|l| seq == l + 1), "gap before {seq}");
        assert!(seq < sent);
        last = Some(seq);
    };
    assert_eq!(close.close_code(), Some(4001), "{}", close.close_reason());
    assert_eq!(wshub::CloseCode(4001), wshub::close_codes::SLOW_CONSUMER);
    raw.send_close(4001, "").await;
    assert!(raw.frames_until_eof().await.is_empty());
    assert_eq!(common::closed(&ws).await, Disconnect::SlowConsumer);
}

#[tokio::test]
async fn write_stall_ends_a_connection_that_never_reads() {
    let config = Config::builder()
        .max_queue_bytes(QUEUE)
        .slow_consumer(SlowConsumerPolicy::DropOldest)
        .write_stall_timeout(Duration::from_millis(200))
        .build();
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let _raw = stubborn_client(ts.addr).await;
    let ws = sockets.next().await;
    let mut i = 0;
    // Flood until the socket is full (a drop proves it), then wait.
    while ws.dropped_messages() == 0 {
        assert!(i < 100_000);
        ws.send(numbered(i)).unwrap();
        i += 1;
        tokio::task::yield_now().await;
    }
    assert_eq!(common::closed(&ws).await, Disconnect::WriteStalled);
}

/// Reads frames until the `END` marker; returns the sequence numbers before it.
fn spawn_reader(mut raw: RawClient) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let f = raw.expect_frame().await;
            if f.payload == b"END" {
                return seqs;
            }
            seqs.push(u64::from_be_bytes(f.payload[..8].try_into().unwrap()));
        }
    })
}

/// Starts reading, waits until the server's queue for `ws` is empty (the
/// reader drains it), then sends `END`, which an empty queue always accepts,
/// and returns what the reader got before it.
async fn drain(raw: RawClient, ws: &WebSocket) -> Vec<u64> {
    let reader = spawn_reader(raw);
    common::within("the queue to drain", async {
        while ws.buffered_amount() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let dropped = ws.dropped_messages();
    ws.send("END").unwrap();
    assert_eq!(ws.dropped_messages(), dropped, "END was dropped");
    common::within("the reader", reader).await.unwrap()
}

/// Floods `ws` under `DropOldest` until the first drop; returns the number of
/// messages sent.
async fn flood_until_drop(ws: &WebSocket) -> u64 {
    let mut sent = 0;
    while ws.dropped_messages() == 0 {
        assert!(sent < 100_000, "nothing was dropped");
        ws.send(numbered(sent)).unwrap();
        sent += 1;
        tokio::task::yield_now().await;
    }
    sent
}

fn drop_oldest_config() -> Config {
    Config::builder()
        .max_queue_bytes(QUEUE)
        .slow_consumer(SlowConsumerPolicy::DropOldest)
        .build()
}

#[tokio::test]
async fn drop_oldest_counts_drops_and_keeps_order() {
    let (ts, mut sockets) = TestServer::start_channel(drop_oldest_config()).await;
    let raw = stubborn_client(ts.addr).await;
    let ws = sockets.next().await;

    let mut sent = common::within("a drop", flood_until_drop(&ws)).await;
    // Well past the first drop; no error ever.
    for _ in 0..200 {
        ws.send(numbered(sent)).unwrap();
        sent += 1;
        tokio::task::yield_now().await;
    }
    assert!(ws.is_open());
    assert!(ws.buffered_amount() > 0);
    assert!(ws.dropped_messages() > 0);

    let seqs = drain(raw, &ws).await;
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "survivors out of order"
    );
    let lost = sent - seqs.len() as u64;
    assert!(lost > 0);
    assert_eq!(ws.dropped_messages(), lost);
    assert!(ws.is_open());
}

/// "Drop the oldest queued messages to make room": under `DropOldest` the most
/// recent message must survive a flood, and the queue must stay near
/// `max_queue_bytes`.
#[tokio::test]
async fn drop_oldest_keeps_the_newest_message() {
    let (ts, mut sockets) = TestServer::start_channel(drop_oldest_config()).await;
    let raw = stubborn_client(ts.addr).await;
    let ws = sockets.next().await;

    let last = common::within("a drop", flood_until_drop(&ws)).await;
    ws.send(numbered(last)).unwrap();
    let buffered = ws.buffered_amount();
    let seqs = drain(raw, &ws).await;
    assert_eq!(
        seqs.last().copied(),
        Some(last),
        "the newest message was dropped (buffered {buffered} bytes with max_queue_bytes {QUEUE})"
    );
}

#[tokio::test]
async fn drop_oldest_buffer_stays_near_the_limit() {
    let (ts, mut sockets) = TestServer::start_channel(drop_oldest_config()).await;
    let _raw = stubborn_client(ts.addr).await;
    let ws = sockets.next().await;
    let sent = common::within("a drop", flood_until_drop(&ws)).await;
    for i in 0..100 {
        ws.send(numbered(sent + i)).unwrap();
        tokio::task::yield_now().await;
    }
    assert!(
        ws.buffered_amount() <= QUEUE + MSG,
        "buffered {} bytes with max_queue_bytes {QUEUE}",
        ws.buffered_amount()
    );
}

/// A close requested while the queue is full must not vanish: either it is
/// queued (the handle stops being open) or it reports an error.
#[tokio::test]
async fn drop_oldest_close_on_a_full_queue_is_not_silently_dropped() {
    let (ts, mut sockets) = TestServer::start_channel(drop_oldest_config()).await;
    let _raw = stubborn_client(ts.addr).await;
    let ws = sockets.next().await;
    common::within("a drop", flood_until_drop(&ws)).await;
    // Top the queue up to exactly its limit, and let the driver move that
    // message into its encoded output (it runs when we yield: it was woken by
    // the send and the socket is full, so it writes nothing).
    let room = QUEUE.saturating_sub(ws.buffered_amount());
    if room > 0 {
        ws.send(vec![b'f'; room]).unwrap();
    }
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert!(ws.buffered_amount() >= QUEUE, "{}", ws.buffered_amount());
    let res = ws.close(wshub::CloseCode::GOING_AWAY, "bye");
    assert!(
        res.is_err() || !ws.is_open(),
        "close() returned {res:?} but the connection is still open (close frame dropped)"
    );
}

//! The driver polls a connection's handler only when the handler's own waker
//! was woken, and does not re-poll its timer while the deadline is not due
//! (see `Gate` in `socket.rs` and `Driver::poll_timers`). These tests cover
//! the wakes that must still reach a handler and the timers that must still
//! fire, over real loopback sockets:
//!
//! - a handler woken by another task, on another worker thread, while its
//!   client keeps sending (every push and every echo arrives, in order);
//! - a handler woken by its own timers;
//! - a handler that keeps yielding (waking itself while it is polled), and one that drains a long channel (tokio's cooperative budget
//!   runs out), must not starve the other connections of a single-threaded
//!   runtime;
//! - a client that keeps sending but never answers a ping is still dropped
//!   with `PongTimeout`, although its connection's driver turns all the time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use common::{connect, echo, recv_text, within, RawClient, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use wshub::{Config, Disconnect, Message, WebSocket};

/// Echoes the client's messages and forwards `pushes` to it, until either ends.
async fn echo_and_forward(mut ws: WebSocket, mut pushes: mpsc::UnboundedReceiver<String>) {
    loop {
        tokio::select! {
            m = ws.recv() => match m {
                Some(m) => {
                    if ws.send(m).is_err() {
                        return;
                    }
                }
                None => return,
            },
            p = pushes.recv() => match p {
                Some(p) => {
                    if ws.send(p).is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_woken_from_another_thread_while_its_client_sends() {
    const N: usize = 2_000;
    let (push_tx, push_rx) = mpsc::unbounded_channel::<String>();
    let push_rx = Arc::new(Mutex::new(Some(push_rx)));
    let ts = TestServer::start(Config::default(), move |ws| {
        let rx = push_rx.lock().unwrap().take();
        async move {
            if let Some(rx) = rx {
                echo_and_forward(ws, rx).await;
            }
        }
    })
    .await;
    let mut client = connect(&ts.url("/")).await;

    // Pushes from a plain thread, echoes from the client, at the same time.
    let pusher = std::thread::spawn(move || {
        for i in 0..N {
            push_tx.send(format!("push {i}")).unwrap();
            if i % 64 == 0 {
                std::thread::yield_now();
            }
        }
        push_tx
    });
    for i in 0..N {
        client.send(format!("echo {i}")).unwrap();
    }
    let (mut pushes, mut echoes) = (0, 0);
    while pushes < N || echoes < N {
        let text = recv_text(&mut client).await;
        if let Some(i) = text.strip_prefix("push ") {
            assert_eq!(i, pushes.to_string(), "pushes out of order");
            pushes += 1;
        } else if let Some(i) = text.strip_prefix("echo ") {
            assert_eq!(i, echoes.to_string(), "echoes out of order");
            echoes += 1;
        } else {
            panic!("unexpected message {text:?}");
        }
    }
    let push_tx = pusher.join().unwrap();
    // And one more after everything went quiet: the wake must not be lost.
    push_tx.send("last".into()).unwrap();
    assert_eq!(recv_text(&mut client).await, "last");
}

#[tokio::test]
async fn handler_woken_by_its_own_timers() {
    let ts = TestServer::start(Config::default(), |ws| async move {
        for i in 0..5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if ws.send(format!("tick {i}")).is_err() {
                return;
            }
        }
    })
    .await;
    let mut client = connect(&ts.url("/")).await;
    for i in 0..5 {
        assert_eq!(recv_text(&mut client).await, format!("tick {i}"));
    }
}

/// Runs a server with `handler` on a single-threaded runtime of its own
/// thread, so that a driver that never returns control shows up as a test
/// failure (a timeout on the test's side) rather than as a hung test.
fn server_on_own_thread<H, F>(handler: H) -> (String, tokio::sync::oneshot::Sender<()>)
where
    H: Fn(WebSocket) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let server = wshub::Server::new(Config::default());
            let stop = async {
                let _ = stop_rx.await;
            };
            server.serve(listener, handler, stop).await.unwrap();
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server thread did not start");
    (format!("ws://{addr}/"), stop_tx)
}

/// `n` echo round trips on a fresh connection to `url`.
async fn echo_roundtrips(url: &str, n: usize) {
    let mut ws = connect(url).await;
    for i in 0..n {
        ws.send(format!("{i}")).unwrap();
        assert_eq!(recv_text(&mut ws).await, i.to_string());
    }
}

/// Yields by waking its task while it is being polled, as `futures-lite`'s
/// `yield_now` does (tokio's defers the wake until the poll is over).
async fn yield_waking_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[tokio::test]
async fn a_yielding_handler_does_not_starve_other_connections() {
    let busy = Arc::new(AtomicBool::new(true));
    let spins = Arc::new(AtomicUsize::new(0));
    let (b, s) = (Arc::clone(&busy), Arc::clone(&spins));
    let (url, _stop) = server_on_own_thread(move |ws| {
        let (busy, spins) = (Arc::clone(&b), Arc::clone(&s));
        async move {
            if ws.path() == "/spin" {
                // Wakes itself on every poll until told to stop.
                while busy.load(Ordering::Relaxed) {
                    spins.fetch_add(1, Ordering::Relaxed);
                    yield_waking_now().await;
                }
                let _ = ws.send("stopped spinning");
            }
            echo(ws).await;
        }
    });
    let mut spinner = connect(&format!("{url}spin")).await;
    echo_roundtrips(&url, 200).await;
    assert!(
        spins.load(Ordering::Relaxed) > 0,
        "the spinning handler never ran"
    );
    busy.store(false, Ordering::Relaxed);
    assert_eq!(recv_text(&mut spinner).await, "stopped spinning");
    spinner.send("still echoing").unwrap();
    assert_eq!(recv_text(&mut spinner).await, "still echoing");
}

#[tokio::test]
async fn a_handler_out_of_cooperative_budget_does_not_starve_others() {
    const BACKLOG: usize = 200_000;
    let (url, _stop) = server_on_own_thread(|ws| async move {
        if ws.path() == "/drain" {
            // tokio's channels spend the task's cooperative budget: every 128
            // receives the handler gets Pending, and a wake once the task's
            // poll is over.
            let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
            for i in 0..BACKLOG {
                tx.send(i).unwrap();
            }
            drop(tx);
            let mut sum = 0usize;
            while let Some(i) = rx.recv().await {
                sum = sum.wrapping_add(i);
            }
            let _ = ws.send(format!("drained {sum}"));
        }
        echo(ws).await;
    });
    let mut drainer = connect(&format!("{url}drain")).await;
    echo_roundtrips(&url, 50).await;
    let expected: usize = (0..BACKLOG).sum();
    assert_eq!(recv_text(&mut drainer).await, format!("drained {expected}"));
}

#[tokio::test]
async fn a_client_that_keeps_sending_but_never_pongs_is_timed_out() {
    let config = Config::builder()
        .ping_interval(Some(Duration::from_millis(50)))
        .pong_timeout(Duration::from_millis(100))
        .build();
    let (ts, mut sockets) = TestServer::start_channel(config).await;
    let mut raw = RawClient::connect(ts.addr, "/").await;
    let mut ws = sockets.next().await;
    let received = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(m) = ws.recv().await {
            assert!(matches!(m, Message::Text(_)));
            n += 1;
        }
        (n, ws.disconnect())
    });
    // A frame every 2 ms (the driver turns for each), never a pong; bounded
    // by count, and it stops when the server drops the connection.
    let sender = tokio::spawn(async move {
        for i in 0..5_000 {
            let text = format!("chatter {i}");
            let frame =
                common::encode_frame(true, common::op::TEXT, text.as_bytes(), Some(common::MASK));
            if raw.io.write_all(&frame).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let (n, reason) = within("the server to drop the client", received)
        .await
        .unwrap();
    assert!(n > 0, "no message arrived before the timeout");
    assert_eq!(reason, Some(Disconnect::PongTimeout));
    sender.abort();
}

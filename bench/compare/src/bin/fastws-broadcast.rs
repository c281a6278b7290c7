//! Broadcast server on `fastwebsockets`, with the seed's semantics: every text
//! or binary message from a client is sent to every other open client
//! (`client !== ws && readyState === OPEN`), not back to the sender.
//!
//! Idiomatic use of the crate: hyper answers the upgrade, the WebSocket is
//! split (`WebSocket::split` with `tokio::io::split`, the crate's
//! `unstable-split` feature) into a `FragmentCollectorRead` and a
//! `WebSocketWrite` over a `BufWriter` (flushed when the queue is empty). A
//! registry holds an unbounded channel per open client; a
//! message read from one client is copied once into `Bytes` and queued for
//! every other client, and each client's writer task writes its queue. The
//! reader's obligated replies (pong, close) go through the same queue, as the
//! crate asks of a split socket.
//!
//! ```text
//! fastws-broadcast 127.0.0.1:9002
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload};
use tokio::io::BufWriter;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// One outgoing frame: its opcode and payload (shared between receivers).
type Out = (OpCode, Bytes);
/// The open clients, by connection number.
type Clients = Arc<Mutex<HashMap<u64, UnboundedSender<Out>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = wshub_compare::bind(wshub_compare::listen_addr("127.0.0.1:9002")?).await?;
    let clients = Clients::default();
    let next = Arc::new(AtomicU64::new(0));
    wshub_compare::fastws::serve(listener, move |fut| {
        let id = next.fetch_add(1, Ordering::Relaxed);
        connection(id, fut, Arc::clone(&clients))
    })
    .await
}

async fn connection(id: u64, fut: UpgradeFut, clients: Clients) {
    let ws = match fut.await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("upgrade failed: {e}");
            return;
        }
    };
    // The write half is buffered: the writer queues what is ready and flushes
    // once, rather than making a system call per frame.
    let (read, mut write) = ws.split(|stream| {
        let (r, w) = tokio::io::split(stream);
        (r, BufWriter::new(w))
    });
    let mut read = FragmentCollectorRead::new(read);
    let (tx, mut rx) = unbounded_channel::<Out>();
    lock(&clients).insert(id, tx.clone());

    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some((opcode, payload)) = next.take() {
                let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
                if write.write_frame(frame).await.is_err() {
                    return;
                }
                if opcode == OpCode::Close {
                    let _ = write.flush().await;
                    return;
                }
                next = rx.try_recv().ok();
            }
            if write.flush().await.is_err() {
                return;
            }
        }
    });

    let mut obligated = |frame: Frame<'_>| {
        let sent = tx
            .send((frame.opcode, Bytes::copy_from_slice(&frame.payload)))
            .map_err(|_| "the writer is gone");
        async move { sent }
    };
    loop {
        let frame = match read.read_frame(&mut obligated).await {
            Ok(f) => f,
            Err(_) => break,
        };
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => {
                let payload = Bytes::copy_from_slice(&frame.payload);
                for (other, tx) in lock(&clients).iter() {
                    if *other != id {
                        // A closed receiver is a client on its way out.
                        let _ = tx.send((frame.opcode, payload.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    lock(&clients).remove(&id);
    drop(tx);
    let _ = writer.await;
}

fn lock(clients: &Clients) -> std::sync::MutexGuard<'_, HashMap<u64, UnboundedSender<Out>>> {
    clients.lock().unwrap_or_else(|p| p.into_inner())
}

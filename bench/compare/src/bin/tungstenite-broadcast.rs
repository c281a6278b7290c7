//! Broadcast server on `tokio-tungstenite`, with the seed's semantics: every
//! text or binary message from a client is sent to every other open client
//! (`client !== ws && readyState === OPEN`), not back to the sender.
//!
//! Idiomatic use of the crate: a registry of open clients, each with an
//! unbounded channel of outgoing messages; the read half of a connection
//! relays into the other clients' channels, and a writer drains the
//! connection's own channel into the write half (feeding what is queued, then
//! one flush). A client leaves the registry when either half ends.
//!
//! ```text
//! tungstenite-broadcast 127.0.0.1:9002
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;

/// The open clients, by connection number.
type Clients = Arc<Mutex<HashMap<u64, UnboundedSender<Message>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = wshub_compare::bind(wshub_compare::listen_addr("127.0.0.1:9002")?).await?;
    let clients = Clients::default();
    let next = AtomicU64::new(0);
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(id, tcp, Arc::clone(&clients)));
                }
                Err(e) => eprintln!("accept failed: {e}"),
            }
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = wshub_compare::shutdown_signal() => {}
    }
    Ok(())
}

async fn connection(id: u64, tcp: TcpStream, clients: Clients) {
    let _ = tcp.set_nodelay(true);
    let ws = match tokio_tungstenite::accept_async(tcp).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("handshake failed: {e}");
            return;
        }
    };
    let (mut write, mut read) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    lock(&clients).insert(id, tx);

    let relay = async {
        while let Some(Ok(msg)) = read.next().await {
            if !(msg.is_text() || msg.is_binary()) {
                continue;
            }
            for (other, tx) in lock(&clients).iter() {
                if *other != id {
                    // A closed receiver is a client on its way out.
                    let _ = tx.send(msg.clone());
                }
            }
        }
    };
    let deliver = async {
        while let Some(msg) = rx.recv().await {
            if write.feed(msg).await.is_err() {
                return;
            }
            while let Ok(msg) = rx.try_recv() {
                if write.feed(msg).await.is_err() {
                    return;
                }
            }
            if write.flush().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = relay => {}
        _ = deliver => {}
    }
    lock(&clients).remove(&id);
}

fn lock(clients: &Clients) -> std::sync::MutexGuard<'_, HashMap<u64, UnboundedSender<Message>>> {
    clients.lock().unwrap_or_else(|p| p.into_inner())
}

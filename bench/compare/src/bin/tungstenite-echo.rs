//! Echo server on `tokio-tungstenite`: every text or binary message goes back
//! to its sender as the same type. Idiomatic use of the crate: accept with
//! `accept_async`, split the stream, and forward the read half (data messages
//! only; tungstenite answers pings itself) into the write half, which batches
//! whatever is ready before flushing.
//!
//! ```text
//! tungstenite-echo 127.0.0.1:9001
//! ```

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = wshub_compare::bind(wshub_compare::listen_addr("127.0.0.1:9001")?).await?;
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    tokio::spawn(connection(tcp));
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

async fn connection(tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let ws = match tokio_tungstenite::accept_async(tcp).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("handshake failed: {e}");
            return;
        }
    };
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|m| future::ready(m.is_text() || m.is_binary()))
        .forward(write)
        .await;
}

//! Echo server on `fastwebsockets`: every text or binary message goes back to
//! its sender as the same type. Idiomatic use of the crate: hyper answers the
//! upgrade (`fastwebsockets::upgrade`), a `FragmentCollector` hands over whole
//! messages, and the crate's automatic pong and close replies stay on.
//!
//! ```text
//! fastws-echo 127.0.0.1:9001
//! ```

use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{FragmentCollector, OpCode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = wshub_compare::bind(wshub_compare::listen_addr("127.0.0.1:9001")?).await?;
    wshub_compare::fastws::serve(listener, echo).await
}

async fn echo(fut: UpgradeFut) {
    let mut ws = match fut.await {
        Ok(ws) => FragmentCollector::new(ws),
        Err(e) => {
            eprintln!("upgrade failed: {e}");
            return;
        }
    };
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(_) => return,
        };
        let written = match frame.opcode {
            OpCode::Close => return,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await,
            _ => Ok(()),
        };
        if written.is_err() {
            return;
        }
    }
}

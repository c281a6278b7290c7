//! `wshub connect URL`: an interactive client like wscat. Lines typed on stdin
//! are sent as text messages; received messages are printed (text as is, binary
//! as a byte count and hex preview); the close code, its reason and wshub's
//! reconnect advice are shown when the connection ends.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use wshub::client::ClientBuilder;
use wshub::{CloseCode, Disconnect, Message};

/// Options of `wshub connect`.
#[derive(Args, Debug)]
pub(crate) struct ConnectArgs {
    /// ws:// or wss:// URL.
    url: String,
    /// Subprotocol to offer (repeatable, in order of preference).
    #[arg(long = "subprotocol", short = 's')]
    subprotocols: Vec<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Offer permessage-deflate.
    #[arg(long)]
    deflate: bool,
    /// PEM file with the CA certificate(s) to trust for wss://.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
}

pub(crate) fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(connect(args));
    // The stdin reader is a blocking thread stuck in read(2); dropping the
    // runtime would wait for it, so a server-side close would not end the
    // program until the user pressed Enter.
    runtime.shutdown_background();
    result
}

fn builder(args: &ConnectArgs) -> anyhow::Result<ClientBuilder> {
    let mut b = ClientBuilder::new()
        .protocols(args.subprotocols.iter().cloned())
        .deflate(args.deflate);
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("--header {h:?} is not `Name: value`");
        };
        b = b.header(name.trim(), value.trim());
    }
    if let Some(ca) = &args.ca {
        b = b.tls_config(wshub::tls::client_config_with_ca(ca)?);
    } else if args.insecure {
        b = b.tls_config(wshub::tls::insecure_client_config()?);
    }
    Ok(b)
}

async fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    let mut ws = builder(&args)?
        .connect(&args.url)
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    eprintln!(
        "connected to {} (subprotocol: {}, permessage-deflate: {}); type lines to send, Ctrl-D to close",
        args.url,
        ws.protocol().unwrap_or("none"),
        if ws.is_compressed() { "on" } else { "off" }
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Message::Text(t)) => println!("< {t}"),
                Some(Message::Binary(b)) => {
                    let preview: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
                    println!("< [{} bytes binary] {preview}{}", b.len(), if b.len() > 32 { "…" } else { "" });
                }
                None => break,
            },
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    if ws.send(line).is_err() {
                        break;
                    }
                }
                Ok(None) | Err(_) => {
                    stdin_open = false;
                    let _ = ws.close(CloseCode::NORMAL, "");
                }
            },
        }
    }
    let why = ws.closed().await;
    report(&why);
    match why {
        Disconnect::Closed { code, .. } if code == CloseCode::NORMAL => Ok(()),
        other => bail!("connection ended: {other}"),
    }
}

fn report(why: &Disconnect) {
    let code = why.code();
    let advice = if code.may_reconnect() {
        "the client may reconnect"
    } else {
        "the client should not reconnect as is"
    };
    eprintln!("disconnected: {why} (close code {code}: {advice})");
}

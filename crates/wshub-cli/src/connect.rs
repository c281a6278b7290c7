//! `wshub connect URL`: an interactive client like wscat. Lines typed on stdin
//! are sent as text messages; received messages are printed (text as is, binary
//! as a byte count and hex preview); the close code, its reason and wshub's
//! reconnect advice are shown when the connection ends.
//!
//! Against a hub, `--token` (or `--anonymous`) makes it speak `wshub.v1`: it
//! offers the subprotocol, sends `connect`, then `subscribe` for each
//! `--subscribe` channel. `--chat CHANNEL` subscribes too and publishes every
//! typed line to the channel as `{"text": LINE}`, showing the channel's
//! messages as `user: text`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use wshub::client::ClientBuilder;
use wshub::hub::protocol::{
    Command, ConnectParams, Method, PublishParams, Push, SubscribeParams, SUBPROTOCOL,
};
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
    /// Hub mode: speak wshub.v1 and `connect` with this JWT.
    #[arg(long, env = "WSHUB_CONNECT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Hub mode: `connect` without a token (the hub must allow anonymous).
    #[arg(long, conflicts_with = "token")]
    anonymous: bool,
    /// Hub mode: subscribe to this channel after connecting (repeatable).
    #[arg(long = "subscribe", value_name = "CHANNEL")]
    subscribe: Vec<String>,
    /// Hub mode, chat: subscribe to CHANNEL and publish each typed line to it.
    #[arg(long, value_name = "CHANNEL")]
    chat: Option<String>,
}

impl ConnectArgs {
    fn hub_mode(&self) -> bool {
        self.token.is_some() || self.anonymous || !self.subscribe.is_empty() || self.chat.is_some()
    }
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
    let mut protocols = args.subprotocols.clone();
    if args.hub_mode() && !protocols.iter().any(|p| p == SUBPROTOCOL) {
        protocols.push(SUBPROTOCOL.to_owned());
    }
    let mut b = ClientBuilder::new()
        .protocols(protocols)
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
    let mut next_id = 0u64;
    let mut command = |method: Method| {
        next_id += 1;
        Command {
            id: next_id,
            method,
        }
        .to_json()
    };
    if args.hub_mode() {
        if args.chat.is_none()
            && args.subscribe.is_empty()
            && args.token.is_none()
            && !args.anonymous
        {
            bail!("hub mode needs --token or --anonymous");
        }
        let _ = ws.send(command(Method::Connect(ConnectParams {
            token: args.token.clone(),
            name: Some("wshub-cli".into()),
            version: Some(env!("CARGO_PKG_VERSION").into()),
        })));
        for channel in args.subscribe.iter().chain(args.chat.iter()) {
            let _ = ws.send(command(Method::Subscribe(SubscribeParams {
                channel: channel.clone(),
                since: None,
            })));
        }
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Message::Text(t)) => match args.chat.as_deref().and_then(|c| chat_line(c, t.as_str())) {
                    Some(line) if line.is_empty() => {}
                    Some(line) => println!("{line}"),
                    None => println!("< {t}"),
                },
                Some(Message::Binary(b)) => {
                    let preview: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
                    println!("< [{} bytes binary] {preview}{}", b.len(), if b.len() > 32 { "…" } else { "" });
                }
                None => break,
            },
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    let frame = match &args.chat {
                        Some(channel) if !line.starts_with('{') => command(Method::Publish(PublishParams {
                            channel: channel.clone(),
                            data: serde_json::json!({ "text": line }),
                        })),
                        _ => line,
                    };
                    if ws.send(frame).is_err() {
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

/// How chat mode shows a frame: a `pub` on the chat channel as `user: text`,
/// join/leave as `* user joined/left`, a successful reply as nothing (an
/// empty line, not printed); `None` prints the frame raw.
fn chat_line(channel: &str, frame: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(frame).ok()?;
    if value.get("push").is_none() {
        // A reply: hide successes, show errors raw.
        return value.get("result").map(|_| String::new());
    }
    let push: Push = serde_json::from_value(value).ok()?;
    let who = |user: &str| {
        if user.is_empty() {
            "(anonymous)".to_owned()
        } else {
            user.to_owned()
        }
    };
    match push {
        Push::Pub {
            channel: c,
            data,
            info,
            ..
        } if c == channel => {
            let user = info
                .map(|i| who(&i.user))
                .unwrap_or_else(|| "(server)".into());
            let text = data
                .get("text")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| data.to_string());
            Some(format!("{user}: {text}"))
        }
        Push::Join { channel: c, member } if c == channel => {
            Some(format!("* {} joined", who(&member.user)))
        }
        Push::Leave { channel: c, member } if c == channel => {
            Some(format!("* {} left", who(&member.user)))
        }
        _ => None,
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

//! `wshub publish CHANNEL DATA`: publishes through the hub's HTTP API (what a
//! backend does), with the API key and address taken from the same
//! configuration `wshub serve` reads unless given on the command line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::settings::ConfigArgs;

/// Options of `wshub publish`.
#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    /// The channel, e.g. `chat:lobby`.
    channel: String,
    /// The data: JSON (`'{"text":"hi"}'`, `42`, `'"a string"'`). With
    /// `--text`, any text, sent as a JSON string.
    data: String,
    /// Send DATA as a JSON string instead of parsing it as JSON.
    #[arg(long)]
    text: bool,
    /// The hub's base URL (default: http(s):// plus `server.listen`).
    #[arg(long)]
    url: Option<String>,
    /// The API key (default: `api.key` of the configuration, or WSHUB_API_KEY).
    #[arg(long, hide_env_values = true)]
    api_key: Option<String>,
    /// A publication tag, `key=value` (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Deliver to everyone except this client id.
    #[arg(long)]
    except_client: Option<String>,
    /// Idempotency key: a retry with the same key is not published twice.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// PEM file with the CA certificate(s) to trust for https://.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub(crate) fn run(args: PublishArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(publish(args))
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let needs_config = args.url.is_none() || args.api_key.is_none();
    let loaded = if needs_config {
        Some(args.config.load()?)
    } else {
        None
    };
    let url = match (&args.url, &loaded) {
        (Some(u), _) => u.trim_end_matches('/').to_owned(),
        (None, Some(l)) => {
            let mut addr = l.config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let scheme = if l.config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{addr}")
        }
        (None, None) => bail!("give --url"),
    };
    let key = args
        .api_key
        .clone()
        .or_else(|| loaded.as_ref().and_then(|l| l.config.api.key.clone()))
        .context("no API key: give --api-key or set api.key (WSHUB_API_KEY)")?;
    let data: serde_json::Value = if args.text {
        serde_json::Value::String(args.data.clone())
    } else {
        serde_json::from_str(&args.data).with_context(|| {
            format!(
                "DATA is not JSON: {:?} (quote a string as '\"text\"' or pass --text)",
                args.data
            )
        })?
    };
    let mut tags = BTreeMap::new();
    for t in &args.tags {
        let Some((k, v)) = t.split_once('=') else {
            bail!("--tag {t:?} is not KEY=VALUE");
        };
        tags.insert(k.to_owned(), v.to_owned());
    }
    let mut body = serde_json::json!({ "channel": args.channel, "data": data });
    if !tags.is_empty() {
        body["tags"] = serde_json::to_value(&tags)?;
    }
    if let Some(c) = &args.except_client {
        body["except_client"] = c.clone().into();
    }
    if let Some(k) = &args.idempotency_key {
        body["idempotency_key"] = k.clone().into();
    }
    let tls = if let Some(ca) = &args.ca {
        Some(wshub::tls::client_config_with_ca(ca)?)
    } else if args.insecure {
        Some(wshub::tls::insecure_client_config()?)
    } else {
        None
    };
    let (status, text) = post(&url, "/api/publish", &key, serde_json::to_vec(&body)?, tls).await?;
    if (200..300).contains(&status) {
        println!("{text}");
        Ok(())
    } else {
        bail!("HTTP {status}: {text}")
    }
}

/// POSTs a JSON body and returns the status and the response body.
async fn post(
    base: &str,
    path: &str,
    key: &str,
    body: Vec<u8>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<(u16, String)> {
    let uri: http::Uri = format!("{base}{path}")
        .parse()
        .with_context(|| format!("invalid URL {base:?}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("the URL must start with http:// or https://"),
    };
    let host = uri.host().context("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let req = http::Request::post(uri.clone())
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, format!("apikey {key}"))
        .body(Full::new(Bytes::from(body)))?;
    if https {
        let Some(config) = tls else {
            bail!(
                "https:// needs --ca FILE (the CA that signed the hub's certificate) or --insecure"
            );
        };
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .context("invalid TLS server name")?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .context("TLS handshake failed")?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<I>(io: I, req: http::Request<Full<Bytes>>) -> anyhow::Result<(u16, String)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake failed")?;
    tokio::spawn(conn);
    let res = sender
        .send_request(req)
        .await
        .context("HTTP request failed")?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

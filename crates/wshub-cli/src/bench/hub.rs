//! `wshub bench hub`: `wshub.v1` subscribers on channels of the hub, and
//! publications through the HTTP API (`POST /api/publish`, keep-alive HTTP/1.1
//! connections) or through client connections (`publish` commands).
//!
//! The hub may be a cluster: with several URLs (`--url` repeated, each a
//! node of one cluster) the subscribers of each channel are spread
//! round-robin over the nodes (the `k`-th subscriber of channel `c` is on
//! node `(c + k) mod NODES`) and publisher `p` uses node `p mod NODES`, so
//! a channel's subscribers sit on several nodes and its publications enter
//! through one of them: most deliveries cross the broker.
//!
//! Subscriber `i` subscribes to channel `PREFIX(i mod N)`. Each channel has
//! exactly one publisher, which sends one request at a time, so a channel's
//! publications are sent in order; its data is `{"seq":K,"t":T,"pad":"…"}`
//! with K counting that channel's publications. Subscribers check every push
//! byte for byte, that K is contiguous (lost / duplicate / out-of-order) and
//! that the channel offsets are contiguous, and record publish-to-delivery
//! latency (T is taken just before the publish request is sent).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::watch;
use wshub::hub::auth::{ClaimsBuilder, Minter};
use wshub::{CloseCode, Message, WebSocket};

use super::cpu::CpuProbe;
use super::payload::HubData;
use super::stats::{group, AtomicHistogram, Progress, Report, SeqTracker};
use super::{check_loopback, CommonArgs};

/// How publications reach the hub.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// `POST /api/publish` with the API key.
    Api,
    /// `publish` commands on `wshub.v1` client connections.
    Client,
}

/// Options of `wshub bench hub`.
#[derive(Args, Debug)]
pub(crate) struct HubArgs {
    /// The hub's base URL (loopback only), e.g. http://127.0.0.1:8080.
    url: Option<String>,
    /// Another node of the same cluster (repeatable): subscribers and
    /// publishers are spread round-robin over all the URLs given.
    #[arg(long = "url", value_name = "URL")]
    more_urls: Vec<String>,
    /// The API key (for `--via api`).
    #[arg(long, hide_env_values = true, env = "WSHUB_API_KEY")]
    api_key: Option<String>,
    /// A connection token for every client (default: anonymous).
    #[arg(long, conflicts_with = "hmac_secret")]
    token: Option<String>,
    /// Mint a token per client (user `bench-N`) with this HS256 secret.
    #[arg(long, hide_env_values = true)]
    hmac_secret: Option<String>,
    /// Subscribers.
    #[arg(short = 'c', long, default_value_t = 100)]
    subscribers: usize,
    /// Channels (`PREFIX0` … `PREFIX(N-1)`), subscribed round-robin.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Channel name prefix; its namespace must exist in the hub's config.
    #[arg(long, default_value = "bench:")]
    channel_prefix: String,
    /// Publications per second, over all channels.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Approximate size of each publication's data in bytes.
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Seconds of publishing.
    #[arg(short = 'd', long, default_value_t = 10)]
    duration: u64,
    /// How publications are sent.
    #[arg(long, value_enum, default_value_t = Via::Api)]
    via: Via,
    /// Publisher connections (HTTP or WebSocket), each owning some channels.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// The hub's WebSocket path.
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// Stop publishing after this many publications even if time is left.
    #[arg(long, default_value_t = 100_000_000)]
    max_messages: u64,
    /// Seconds to wait after publishing for pushes still on their way.
    #[arg(long, default_value_t = 5)]
    drain: u64,
    #[command(flatten)]
    pub(super) common: CommonArgs,
}

struct Shared {
    start: Instant,
    data: HubData,
    delivered: Arc<AtomicU64>,
    published: Arc<AtomicU64>,
    /// Successful publications per channel.
    per_channel: Vec<AtomicU64>,
    publish_errors: Arc<AtomicU64>,
    first_error: std::sync::Mutex<Option<String>>,
    latency: AtomicHistogram,
    channels: Vec<String>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn publish_failed(&self, what: String) {
        self.publish_errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(what);
    }
}

struct Outcome {
    expected: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    offset_gaps: u64,
    error: Option<String>,
}

pub(super) async fn run(args: HubArgs) -> anyhow::Result<()> {
    let urls: Vec<&String> = args.url.iter().chain(&args.more_urls).collect();
    if urls.is_empty() {
        bail!("give the hub's URL (and --url for every further node)");
    }
    if args.subscribers == 0 || args.channels == 0 || args.publishers == 0 || args.rate == 0 {
        bail!("--subscribers, --channels, --publishers and --rate must be at least 1");
    }
    let mut nodes = Vec::with_capacity(urls.len());
    for url in &urls {
        check_loopback(url)?;
        nodes.push(Node::parse(url, &args.ws_path)?);
    }
    let base = urls
        .iter()
        .map(|u| u.trim_end_matches('/'))
        .collect::<Vec<_>>()
        .join(", ");
    let api_key = match (args.via, &args.api_key) {
        (Via::Api, None) => bail!("--via api needs --api-key (or WSHUB_API_KEY)"),
        (_, k) => k.clone(),
    };
    let minter = args
        .hmac_secret
        .as_deref()
        .map(|s| Minter::hs256(s.as_bytes()))
        .transpose()
        .context("--hmac-secret")?;
    let token = |i: usize| -> anyhow::Result<Option<String>> {
        if let Some(m) = &minter {
            return Ok(Some(m.mint(
                &ClaimsBuilder::new(format!("bench-{i}")),
                SystemTime::now(),
            )?));
        }
        Ok(args.token.clone())
    };
    let duration = Duration::from_secs(args.duration.clamp(1, 24 * 3600));
    let shared = Arc::new(Shared {
        start: Instant::now(),
        data: HubData::new(args.size),
        delivered: Arc::new(AtomicU64::new(0)),
        published: Arc::new(AtomicU64::new(0)),
        per_channel: (0..args.channels).map(|_| AtomicU64::new(0)).collect(),
        publish_errors: Arc::new(AtomicU64::new(0)),
        first_error: std::sync::Mutex::new(None),
        latency: AtomicHistogram::new(),
        channels: (0..args.channels)
            .map(|c| format!("{}{c}", args.channel_prefix))
            .collect(),
    });

    // Subscribers: connect, subscribe, then read in their own task.
    let builder = args.common.client().protocols(["wshub.v1"]);
    let (finish_tx, finish_rx) = watch::channel::<Option<tokio::time::Instant>>(None);
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let ws_url = &nodes[(i % args.channels + i / args.channels) % nodes.len()].ws_url;
        let what = format!("subscriber {i}");
        let mut ws = args.common.connect(&builder, ws_url, &what).await?;
        hub_connect(&mut ws, token(i)?.as_deref())
            .await
            .with_context(|| format!("subscriber {i}"))?;
        let channel = i % args.channels;
        call(
            &mut ws,
            2,
            "subscribe",
            json!({ "channel": shared.channels[channel] }),
        )
        .await
        .with_context(|| {
            format!(
                "subscriber {i}: subscribing to {}",
                shared.channels[channel]
            )
        })?;
        subscribers.push(tokio::spawn(subscriber(
            i,
            ws,
            channel,
            Arc::clone(&shared),
            finish_rx.clone(),
        )));
    }

    // Publishers, each owning the channels c with c % publishers == p.
    let publishers = args.publishers.min(args.channels);
    let mut clients = Vec::new();
    if args.via == Via::Client {
        for p in 0..publishers {
            let ws_url = &nodes[p % nodes.len()].ws_url;
            let what = format!("publisher {p}");
            let mut ws = args.common.connect(&builder, ws_url, &what).await?;
            hub_connect(&mut ws, token(args.subscribers + p)?.as_deref())
                .await
                .with_context(|| format!("publisher {p}"))?;
            clients.push(ws);
        }
    }
    let progress = Progress::start(
        "hub",
        args.common.quiet,
        duration,
        vec![
            ("deliveries", Arc::clone(&shared.delivered)),
            ("published", Arc::clone(&shared.published)),
            ("publish errors", Arc::clone(&shared.publish_errors)),
        ],
    );
    let mut cpu = CpuProbe::start(&args.common)?;
    let send_start = Instant::now();
    let deadline = send_start + duration;
    let mut tasks = Vec::new();
    let mut clients = clients.into_iter();
    for p in 0..publishers {
        let owned: Vec<usize> = (p..args.channels).step_by(publishers).collect();
        let rate = args.rate as f64 * owned.len() as f64 / args.channels as f64;
        let max = args.max_messages * owned.len() as u64 / args.channels as u64;
        let plan = Plan {
            owned,
            rate,
            max: max.max(1),
            start: send_start,
            deadline,
        };
        let shared = Arc::clone(&shared);
        tasks.push(match args.via {
            Via::Api => {
                let authority = nodes[p % nodes.len()].authority.clone();
                let key = api_key.clone().unwrap_or_default();
                tokio::spawn(async move { publish_api(&authority, &key, plan, &shared).await })
            }
            Via::Client => {
                let ws = clients.next().context("publisher connection")?;
                tokio::spawn(async move { publish_client(ws, plan, &shared).await })
            }
        });
    }
    for t in tasks {
        match tokio::time::timeout_at((deadline + Duration::from_secs(30)).into(), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => shared.publish_failed(format!("{e:#}")),
            Ok(Err(e)) => bail!("publisher task panicked: {e}"),
            Err(_) => bail!("a publisher did not stop within 30 s of the end"),
        }
    }
    let send_time = send_start.elapsed();
    let delivered = shared.delivered.load(Ordering::Acquire);
    let server_cost = cpu.finish(delivered)?;
    let generator = cpu.generator_percent();
    let drain_deadline =
        tokio::time::Instant::now() + Duration::from_secs(args.drain.clamp(1, 600));
    let _ = finish_tx.send(Some(drain_deadline));
    let mut outcomes = Vec::with_capacity(subscribers.len());
    for s in subscribers {
        match tokio::time::timeout_at(drain_deadline + Duration::from_secs(5), s).await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => bail!("subscriber task panicked: {e}"),
            Err(_) => bail!("a subscriber did not stop after the drain time"),
        }
    }
    let rates = progress.finish().await;

    let published = shared.published.load(Ordering::Acquire);
    let publish_errors = shared.publish_errors.load(Ordering::Acquire);
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let lost = sum(|o| o.expected.saturating_sub(o.unique));
    let rate = delivered as f64 / send_time.as_secs_f64();
    let mut r = Report::new(
        "hub",
        format!(
            "hub {} subscribers on {} channels, {} publications/s of ~{} B via {} against {}",
            args.subscribers,
            args.channels,
            group(args.rate),
            args.size,
            match args.via {
                Via::Api => "the HTTP API",
                Via::Client => "clients",
            },
            base
        ),
    );
    args.common.describe(&mut r);
    r.field("url", urls[0].trim_end_matches('/'));
    r.field(
        "urls",
        urls.iter()
            .map(|u| u.trim_end_matches('/'))
            .collect::<Vec<_>>(),
    );
    r.field("nodes", nodes.len());
    r.field("subscribers", args.subscribers);
    r.field("channels", args.channels);
    r.field("rate", args.rate);
    r.field("size", args.size);
    r.field(
        "via",
        match args.via {
            Via::Api => "api",
            Via::Client => "client",
        },
    );
    r.field("publishers", publishers);
    r.seconds("publishing", "seconds", send_time);
    r.count("publications", "published", published);
    r.rate(
        "publications per second",
        "",
        "published_per_sec",
        published as f64 / send_time.as_secs_f64(),
    );
    r.count("publish errors", "publish_errors", publish_errors);
    r.count(
        "deliveries",
        "deliveries",
        shared.delivered.load(Ordering::Acquire),
    );
    r.rate("deliveries per second", "", "deliveries_per_sec", rate);
    r.latency("publish to delivery", shared.latency.snapshot());
    r.count("lost", "lost", lost);
    r.count("duplicates", "duplicates", sum(|o| o.duplicates));
    r.count("out of order", "out_of_order", sum(|o| o.out_of_order));
    r.count("offset gaps", "offset_gaps", sum(|o| o.offset_gaps));
    r.count("failed subscribers", "errors", failed.len() as u64);
    server_cost.report(&mut r, "delivery", "server_cpu_us_per_delivery");
    r.field("generator_cpu_percent", generator);
    r.rates("deliveries/s", rates);
    r.emit(&args.common)?;
    if let Some(e) = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        eprintln!("first publish error: {e}");
    }
    for e in failed.iter().take(5) {
        eprintln!("subscriber failed: {e}");
    }
    if !failed.is_empty() {
        bail!("{} subscribers failed", failed.len());
    }
    if publish_errors > 0 {
        bail!("{publish_errors} publications failed");
    }
    Ok(())
}

/// One node of the hub: where its HTTP API and WebSocket endpoint are.
struct Node {
    /// `host:port`.
    authority: String,
    /// `ws://host:port/PATH`.
    ws_url: String,
}

impl Node {
    fn parse(url: &str, ws_path: &str) -> anyhow::Result<Node> {
        let base = url.trim_end_matches('/');
        let uri: http::Uri = base
            .parse()
            .with_context(|| format!("invalid URL {base:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!(
                "the hub URL must be http://HOST:PORT, not {base:?} (https is not supported by the bench)"
            );
        }
        let authority = uri
            .authority()
            .with_context(|| format!("the URL {base:?} has no host"))?
            .to_string();
        Ok(Node {
            ws_url: format!("ws://{authority}{ws_path}"),
            authority,
        })
    }
}

/// Sends `connect` (with `token`, or anonymous) and checks the reply.
async fn hub_connect(ws: &mut WebSocket, token: Option<&str>) -> anyhow::Result<()> {
    let params = match token {
        Some(t) => json!({ "token": t, "name": "wshub-bench" }),
        None => json!({ "name": "wshub-bench" }),
    };
    call(ws, 1, "connect", params).await.map(drop)
}

/// Sends a command and waits (10 s at most) for its successful result.
async fn call(ws: &mut WebSocket, id: u64, method: &str, params: Value) -> anyhow::Result<Value> {
    let cmd = json!({ "id": id, "method": method, "params": params });
    ws.send(cmd.to_string())?;
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let Some(msg) = ws.recv().await else {
                bail!("connection closed: {:?}", ws.disconnect());
            };
            let Message::Text(t) = msg else {
                bail!("binary frame from the hub");
            };
            let v: Value = serde_json::from_str(t.as_str()).context("reply is not JSON")?;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                return Ok(v);
            }
        }
    })
    .await
    .with_context(|| format!("no reply to {method} within 10 s"))??;
    match reply.get("result") {
        Some(r) => Ok(r.clone()),
        None => bail!("{method} failed: {}", reply["error"]),
    }
}

/// One subscriber's reading loop.
async fn subscriber(
    index: usize,
    mut ws: WebSocket,
    channel: usize,
    shared: Arc<Shared>,
    mut finish: watch::Receiver<Option<tokio::time::Instant>>,
) -> Outcome {
    let name = shared.channels[channel].as_bytes().to_vec();
    let mut seq = SeqTracker::new();
    let mut last_offset: Option<u64> = None;
    let mut offset_gaps = 0;
    let mut end = None;
    let error = loop {
        if end.is_some() && seq.unique >= shared.per_channel[channel].load(Ordering::Acquire) {
            break None;
        }
        let msg = match end {
            None => tokio::select! {
                m = ws.recv() => m,
                _ = finish.changed() => {
                    end = *finish.borrow();
                    continue;
                }
            },
            Some(deadline) => match tokio::time::timeout_at(deadline, ws.recv()).await {
                Ok(m) => m,
                Err(_) => break None,
            },
        };
        let Some(msg) = msg else {
            break Some(format!(
                "subscriber {index}: connection closed: {:?}",
                ws.disconnect()
            ));
        };
        let Message::Text(text) = &msg else {
            break Some(format!("subscriber {index}: binary frame"));
        };
        let d = match shared.data.check(text.as_bytes(), &name) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => break Some(format!("subscriber {index}: {e}")),
        };
        let now = shared.now_ns();
        shared.latency.record(now.saturating_sub(d.t));
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        seq.record(d.seq);
        if last_offset.is_some_and(|l| d.offset != l + 1) {
            offset_gaps += 1;
        }
        last_offset = Some(d.offset);
    };
    let _ = ws.close(CloseCode::NORMAL, "");
    Outcome {
        expected: shared.per_channel[channel].load(Ordering::Acquire),
        unique: seq.unique,
        duplicates: seq.duplicates,
        out_of_order: seq.out_of_order,
        offset_gaps,
        error,
    }
}

/// What one publisher sends: its channels, round-robin, at `rate` per second.
struct Plan {
    owned: Vec<usize>,
    rate: f64,
    max: u64,
    start: Instant,
    deadline: Instant,
}

impl Plan {
    /// Waits until the next publication is due; `None` when time or count is up.
    async fn next(&self, done: u64) -> Option<()> {
        if done >= self.max {
            return None;
        }
        let due = self.start + Duration::from_secs_f64(done as f64 / self.rate);
        if due >= self.deadline || Instant::now() >= self.deadline {
            return None;
        }
        tokio::time::sleep_until(due.into()).await;
        Some(())
    }
}

/// Publishes through `POST /api/publish` on one keep-alive connection.
async fn publish_api(
    authority: &str,
    key: &str,
    plan: Plan,
    shared: &Shared,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .context("HTTP handshake failed")?;
    tokio::spawn(conn);
    let uri: http::Uri = format!("http://{authority}/api/publish").parse()?;
    let auth = http::HeaderValue::from_str(&format!("apikey {key}"))?;
    let host = http::HeaderValue::from_str(authority)?;
    let mut k = vec![0u64; plan.owned.len()];
    let mut body = Vec::with_capacity(256);
    let mut done = 0u64;
    let mut failures = 0u32;
    while plan.next(done).await.is_some() {
        let slot = (done % plan.owned.len() as u64) as usize;
        let channel = plan.owned[slot];
        body.clear();
        body.extend_from_slice(b"{\"channel\":\"");
        body.extend_from_slice(shared.channels[channel].as_bytes());
        body.extend_from_slice(b"\",\"data\":");
        shared.data.write(&mut body, k[slot], shared.now_ns());
        body.push(b'}');
        let req = http::Request::post(uri.clone())
            .header(http::header::HOST, host.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, auth.clone())
            .body(Full::new(Bytes::copy_from_slice(&body)))?;
        sender.ready().await.context("the HTTP connection closed")?;
        let res = sender
            .send_request(req)
            .await
            .context("HTTP request failed")?;
        let status = res.status();
        let text = res.into_body().collect().await?.to_bytes();
        done += 1;
        if status == http::StatusCode::OK {
            k[slot] += 1;
            shared.per_channel[channel].fetch_add(1, Ordering::AcqRel);
            shared.published.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.publish_failed(format!("HTTP {status}: {}", String::from_utf8_lossy(&text)));
            failures += 1;
            if failures >= 100 {
                bail!("100 publications failed; stopping this publisher");
            }
        }
    }
    Ok(())
}

/// Publishes through `publish` commands, one in flight at a time.
async fn publish_client(mut ws: WebSocket, plan: Plan, shared: &Shared) -> anyhow::Result<()> {
    let mut k = vec![0u64; plan.owned.len()];
    let mut cmd = Vec::with_capacity(256);
    let mut done = 0u64;
    let mut id = 10u64;
    let mut failures = 0u32;
    while plan.next(done).await.is_some() {
        let slot = (done % plan.owned.len() as u64) as usize;
        let channel = plan.owned[slot];
        id += 1;
        cmd.clear();
        cmd.extend_from_slice(
            format!("{{\"id\":{id},\"method\":\"publish\",\"params\":{{\"channel\":\"").as_bytes(),
        );
        cmd.extend_from_slice(shared.channels[channel].as_bytes());
        cmd.extend_from_slice(b"\",\"data\":");
        shared.data.write(&mut cmd, k[slot], shared.now_ns());
        cmd.extend_from_slice(b"}}");
        // ASCII only.
        ws.send(String::from_utf8_lossy(&cmd).into_owned())?;
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let Some(msg) = ws.recv().await else {
                    bail!("publisher connection closed: {:?}", ws.disconnect());
                };
                let Message::Text(t) = msg else {
                    bail!("binary frame from the hub");
                };
                let v: Value = serde_json::from_str(t.as_str()).context("reply is not JSON")?;
                if v.get("id").and_then(Value::as_u64) == Some(id) {
                    return Ok(v);
                }
            }
        })
        .await
        .context("no reply to publish within 10 s")??;
        done += 1;
        if reply.get("result").is_some() {
            k[slot] += 1;
            shared.per_channel[channel].fetch_add(1, Ordering::AcqRel);
            shared.published.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.publish_failed(format!("publish failed: {}", reply["error"]));
            failures += 1;
            if failures >= 100 {
                bail!("100 publications failed; stopping this publisher");
            }
        }
    }
    let _ = ws.close(CloseCode::NORMAL, "");
    Ok(())
}

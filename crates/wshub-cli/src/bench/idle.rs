//! `wshub bench idle`: opens N connections and holds them idle, to measure
//! what an idle connection costs the server (RSS from /proc with
//! `--server-pid`).
//!
//! One source address has about 28 000 ephemeral ports, so connections are
//! spread over the source addresses 127.0.0.2 … 127.0.0.254 (each socket is
//! bound before connecting). That needs a socket this crate creates, and the
//! library client only takes a URL, so the handshake is done here with the
//! sans-IO core (`ClientRequest`, `parse_response`) and each connection is a
//! client-role `wshub_proto::Connection` that answers the server's heartbeat
//! pings. The soft `RLIMIT_NOFILE` is raised to the hard limit first.
//!
//! With `--deflate` each connection negotiates permessage-deflate, sends one
//! compressed message and waits for its echo before it goes idle, so that the
//! server holds whatever state a connection that has used compression keeps:
//! the difference from a run without `--deflate` is the extra memory of a
//! compressing connection. The offer is the library client's default (the
//! client keeps its context, as browsers do), which obliges the server to keep
//! a decompressor per connection.

use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use wshub::proto::deflate::{client_accept, client_offer, DeflateConfig, DeflateParams};
use wshub::proto::handshake::{parse_response, ClientRequest};
use wshub::proto::{connection, CloseCode, Connection, Event, Limits, Message, Role};

use super::stats::{group, Progress, Report};
use super::{check_loopback, process_rss, CommonArgs};

/// Options of `wshub bench idle`.
#[derive(Args, Debug)]
pub(crate) struct IdleArgs {
    /// Server URL (loopback only, ws://), e.g. ws://127.0.0.1:9001/.
    url: String,
    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 1000)]
    connections: usize,
    /// Seconds to hold them open once all are connected.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Connect from the default source address only (no 127.0.0.x spread).
    #[arg(long)]
    no_spread: bool,
    #[command(flatten)]
    pub(super) common: CommonArgs,
}

struct Target {
    addr: SocketAddr,
    host_header: String,
    path: String,
    /// permessage-deflate to offer (`--deflate`).
    deflate: Option<DeflateConfig>,
}

/// Size of the message a `--deflate` connection sends once: more than the
/// largest deflate window (32 KiB), so the server's decompressor has used its
/// whole window, the most a compressing connection can make it hold.
const DEFLATE_PROBE_LEN: usize = 40 * 1024;

/// The message a `--deflate` connection sends once and expects back: chat-like
/// JSON lines, so that it compresses as real traffic does. Built once; every
/// connection sends a clone (shared bytes, no copy).
fn deflate_probe() -> &'static Message {
    static PROBE: std::sync::OnceLock<Message> = std::sync::OnceLock::new();
    PROBE.get_or_init(|| {
        let mut text = String::with_capacity(DEFLATE_PROBE_LEN + 128);
        let mut seq = 0u64;
        while text.len() < DEFLATE_PROBE_LEN {
            text.push_str(&format!(
                "{{\"type\":\"message\",\"room\":\"lobby-{}\",\"user\":\"user-{}\",\"seq\":{seq},\"text\":\"message {seq} of the idle benchmark\"}}\n",
                seq % 7,
                seq * 7919 % 1000
            ));
            seq += 1;
        }
        Message::from(text)
    })
}

fn target(url: &str) -> anyhow::Result<(String, u16, String, String)> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("idle supports ws:// URLs only");
    }
    let auth = uri.authority().context("the URL has no host")?;
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = auth.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_owned();
    Ok((host, port, auth.as_str().to_owned(), path))
}

#[derive(Default)]
struct Counters {
    open: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    pings: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    /// `--deflate`: connections whose compressed message came back intact.
    echoed: Arc<AtomicU64>,
    first_error: std::sync::Mutex<Option<String>>,
}

pub(super) async fn run(args: IdleArgs) -> anyhow::Result<()> {
    check_loopback(&args.url)?;
    if args.connections == 0 || args.concurrency == 0 {
        bail!("--connections and --concurrency must be at least 1");
    }
    let (host, port, host_header, path) = target(&args.url)?;
    match rlimit::raise_nofile() {
        Ok((old, new)) if old != new => {
            eprintln!("raised the open-files limit (RLIMIT_NOFILE) from {old} to {new}");
        }
        Ok((old, _)) => eprintln!("open-files limit (RLIMIT_NOFILE): {old}"),
        Err(e) => eprintln!("could not raise the open-files limit: {e}"),
    }
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    if !addr.ip().is_loopback() {
        bail!("refusing to load-test {addr}: only loopback targets are allowed");
    }
    let spread = !args.no_spread && addr.is_ipv4();
    let target = Arc::new(Target {
        addr,
        host_header,
        path,
        deflate: args.common.deflate.then(DeflateConfig::default),
    });
    let rss_before = args.common.server_pid.map(process_rss).transpose()?;
    let counters = Arc::new(Counters::default());
    let (release_tx, release_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let connect_start = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let source = spread.then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 253) as u8)));
        let (target, counters, gate, release) = (
            Arc::clone(&target),
            Arc::clone(&counters),
            Arc::clone(&gate),
            release_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let stream = tokio::time::timeout(Duration::from_secs(10), open(&target, source))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the handshake timed out")));
            drop(permit);
            match stream {
                Ok((tcp, leftover, params)) => {
                    counters.open.fetch_add(1, Ordering::AcqRel);
                    let mut config = connection::Config::new(Role::Client).with_deflate(params);
                    if let Some(d) = &target.deflate {
                        config = config.with_compression(d.compression_level, d.min_message_size);
                    }
                    hold(tcp, leftover, config, release, &counters).await;
                }
                Err(e) => {
                    counters.failed.fetch_add(1, Ordering::AcqRel);
                    let mut first = counters
                        .first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert(format!("{e:#}"));
                }
            }
        }));
    }
    let hold_time = Duration::from_secs(args.hold.clamp(1, 24 * 3600));
    let progress = Progress::start(
        "idle",
        args.common.quiet,
        hold_time,
        vec![
            ("open", Arc::clone(&counters.open)),
            ("failed", Arc::clone(&counters.failed)),
            ("pings answered", Arc::clone(&counters.pings)),
        ],
    );
    // Every attempt ends within its 10 s timeout once it holds a permit, and
    // permits are handed out in waves of `concurrency`.
    let waves = args.connections.div_ceil(args.concurrency) as u64;
    let connect_deadline = connect_start + Duration::from_secs(30 + 10 * waves.min(360));
    loop {
        let settled =
            counters.open.load(Ordering::Acquire) + counters.failed.load(Ordering::Acquire);
        if settled >= args.connections as u64 || Instant::now() > connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_time = connect_start.elapsed();
    let opened = counters.open.load(Ordering::Acquire);
    if args.common.deflate {
        // Every connection's compressed message should come back before the
        // memory is measured; bounded, a missing echo is reported below.
        let echo_deadline = Instant::now() + Duration::from_secs(10);
        while counters.echoed.load(Ordering::Acquire) < opened && Instant::now() < echo_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Let the server finish registering the last connections.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open = args.common.server_pid.map(process_rss).transpose()?;
    tokio::time::sleep(hold_time).await;
    let rss_end = args.common.server_pid.map(process_rss).transpose()?;
    let dropped = counters.dropped.load(Ordering::Acquire);
    let _ = release_tx.send(true);
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    for t in tasks {
        if tokio::time::timeout_at(end, t).await.is_err() {
            break;
        }
    }
    let rates = progress.finish().await;

    let failed = counters.failed.load(Ordering::Acquire);
    let mut r = Report::new(
        "idle",
        format!(
            "idle {} connections held {} s against {}{}",
            args.connections,
            hold_time.as_secs(),
            args.url,
            if spread { " from 127.0.0.2-254" } else { "" }
        ),
    );
    args.common.describe(&mut r);
    r.field("url", args.url.as_str());
    r.field("connections", args.connections);
    r.field("hold_seconds", hold_time.as_secs());
    r.field("spread_sources", spread);
    r.count("connections opened", "opened", opened);
    r.count("failed", "failed", failed);
    r.row(
        "time to connect all",
        format!(
            "{:.2} s ({} /s)",
            connect_time.as_secs_f64(),
            group((opened as f64 / connect_time.as_secs_f64()) as u64)
        ),
        "connect_seconds",
        (connect_time.as_secs_f64() * 1000.0).round() / 1000.0,
    );
    r.count("closed by the server during hold", "dropped", dropped);
    let echoed = counters.echoed.load(Ordering::Acquire);
    if args.common.deflate {
        r.count("compressed messages echoed", "deflate_echoed", echoed);
    }
    r.count(
        "heartbeat pings answered",
        "pings_answered",
        counters.pings.load(Ordering::Acquire),
    );
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    if let (Some(before), Some(open), Some(end)) = (rss_before, rss_open, rss_end) {
        r.row(
            "server RSS before",
            mib(before),
            "server_rss_before",
            before,
        );
        r.row("server RSS all open", mib(open), "server_rss_open", open);
        r.row("server RSS end of hold", mib(end), "server_rss_end", end);
        let per = open.saturating_sub(before) / opened.max(1);
        r.row(
            "server memory per connection",
            format!("{} B", group(per)),
            "server_bytes_per_connection",
            per,
        );
    }
    r.rates("new connections/s", rates);
    r.emit(&args.common)?;
    if let Some(e) = counters
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        eprintln!("first connection error: {e}");
    }
    if failed > 0 {
        bail!("{failed} connections failed");
    }
    if args.common.deflate && echoed < opened {
        bail!(
            "{} of {opened} connections did not get their compressed message back (is {} an echo server?)",
            opened - echoed,
            args.url
        );
    }
    Ok(())
}

/// TCP connect (from `source` when given) and the upgrade handshake. Returns
/// the stream, any bytes read past the response head, and the negotiated
/// permessage-deflate parameters (an error if `--deflate` was declined).
async fn open(
    target: &Target,
    source: Option<IpAddr>,
) -> anyhow::Result<(TcpStream, Vec<u8>, Option<DeflateParams>)> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to {ip}"))?;
    }
    let mut tcp = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    let _ = tcp.set_nodelay(true);
    let mut request = Vec::with_capacity(256);
    let offer = target.deflate.as_ref().map(client_offer);
    let key = ClientRequest {
        host: &target.host_header,
        path: &target.path,
        protocols: &[],
        extensions: offer.as_deref(),
        headers: &[],
    }
    .write(&mut request);
    tcp.write_all(&request).await?;
    let limits = Limits::default();
    let mut buf = Vec::with_capacity(512);
    loop {
        if let Some(r) = parse_response(&buf, &limits, &key, &[])? {
            let params = match &target.deflate {
                Some(config) => Some(
                    client_accept(&r.extensions, config)?
                        .context("the server did not accept permessage-deflate (--deflate)")?,
                ),
                None if !r.extensions.is_empty() => {
                    bail!("the server answered with extensions that were not offered")
                }
                None => None,
            };
            return Ok((tcp, buf.split_off(r.len), params));
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            bail!("the server closed the connection during the handshake");
        }
    }
}

/// Holds one connection: answers pings until released, then closes. With
/// deflate on it first sends [`deflate_probe`] and counts its echo.
async fn hold(
    mut tcp: TcpStream,
    mut leftover: Vec<u8>,
    config: connection::Config,
    mut release: watch::Receiver<bool>,
    counters: &Counters,
) {
    let compressing = config.deflate.is_some();
    let mut conn = Connection::new(config, tokio::time::Instant::now().into_std());
    if compressing && conn.send(deflate_probe().clone()).is_err() {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut buf = [0u8; 512];
    let mut released = false;
    let mut input: Option<usize> = None;
    loop {
        let fed = match input.take() {
            Some(n) => conn.handle_input(Instant::now(), &mut buf[..n]),
            None if !leftover.is_empty() => {
                let r = conn.handle_input(Instant::now(), &mut leftover);
                leftover = Vec::new();
                r
            }
            None => Ok(()),
        };
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Ping(_) => {
                    counters.pings.fetch_add(1, Ordering::Relaxed);
                }
                Event::Message(m) if compressing && m == *deflate_probe() => {
                    counters.echoed.fetch_add(1, Ordering::Relaxed);
                }
                Event::Close(_) if !released => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        let flushed = flush(&mut tcp, &mut conn).await;
        if fed.is_err() || flushed.is_err() || conn.state() == wshub::proto::State::Closed {
            if !released && conn.state() != wshub::proto::State::Closed {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let n = if released {
            match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            }
        } else {
            tokio::select! {
                r = tcp.read(&mut buf) => r.unwrap_or(0),
                _ = release.changed() => {
                    released = true;
                    let _ = conn.close(Instant::now(), CloseCode::NORMAL, "");
                    continue;
                }
            }
        };
        if n == 0 {
            if !released {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        input = Some(n);
    }
}

async fn flush(tcp: &mut TcpStream, conn: &mut Connection) -> std::io::Result<()> {
    while conn.has_output() {
        let n = {
            let mut iov = [IoSlice::new(&[]); 8];
            let k = conn.chunks_vectored(&mut iov);
            tcp.write_vectored(&iov[..k]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        conn.advance_output(n);
    }
    Ok(())
}

/// Raising `RLIMIT_NOFILE` (std has no API for it), through the `libc` crate.
mod rlimit {
    /// Raises the soft limit to the hard one; returns (old soft, new soft).
    #[cfg(unix)]
    // `rlim_t` is `u64` on 64-bit Linux but narrower or signed elsewhere.
    #[allow(clippy::useless_conversion)]
    pub(super) fn raise_nofile() -> std::io::Result<(u64, u64)> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable `struct rlimit` for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let old = u64::try_from(lim.rlim_cur).unwrap_or(u64::MAX);
        if lim.rlim_cur < lim.rlim_max {
            let new = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: `new` is a valid `struct rlimit` that outlives the call.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok((old, u64::try_from(lim.rlim_max).unwrap_or(u64::MAX)));
        }
        Ok((old, old))
    }

    #[cfg(not(unix))]
    pub(super) fn raise_nofile() -> std::io::Result<(u64, u64)> {
        Err(std::io::Error::other("not supported on this platform"))
    }
}

//! `wshub bench`: a load generator on wshub's own client (the client role of the
//! protocol core). `echo` keeps W messages in flight on each of N connections for
//! a fixed time, checks every echoed payload byte for byte, and reports
//! throughput and latency percentiles.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use wshub::client::ClientBuilder;
use wshub::{CloseCode, Message};

/// `wshub bench` modes.
#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Echo load: N connections × W messages in flight.
    Echo(EchoArgs),
}

/// Options of `wshub bench echo`.
#[derive(Args, Debug)]
pub(crate) struct EchoArgs {
    /// Server URL (loopback only), e.g. ws://127.0.0.1:9001/.
    url: String,
    /// Connections.
    #[arg(short = 'c', long, default_value_t = 100)]
    connections: usize,
    /// Messages in flight per connection.
    #[arg(short = 'w', long, default_value_t = 1)]
    window: usize,
    /// Payload size in bytes.
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Seconds to measure (after a 1 s warm-up).
    #[arg(short = 'd', long, default_value_t = 10)]
    duration: u64,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// PID of the server process (Linux): report its CPU time per message over
    /// the measured window, read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// CPU time (user + system) of process `pid`, from /proc/PID/stat.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th
    // and 15th fields of the line, in clock ticks.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("unexpected /proc stat format")
    };
    let total = ticks(11)? + ticks(12)?;
    // CLK_TCK is 100 on every Linux this runs on.
    Ok(Duration::from_millis(total * 10))
}

pub(crate) fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cmd {
        BenchCommand::Echo(args) => runtime.block_on(echo(args)),
    }
}

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!("refusing to load-test {host:?}: only loopback targets are allowed");
    }
    Ok(())
}

struct Stats {
    received: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
    latencies: std::sync::Mutex<Vec<u32>>,
}

async fn echo(args: EchoArgs) -> anyhow::Result<()> {
    check_loopback(&args.url)?;
    if args.connections == 0 || args.window == 0 {
        bail!("--connections and --window must be at least 1");
    }
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        latencies: std::sync::Mutex::new(Vec::new()),
    });
    let builder = ClientBuilder::new();
    let mut sockets = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        sockets.push(builder.connect(&args.url).await.context("connecting")?);
    }
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets.into_iter().enumerate() {
        let stats = Arc::clone(&stats);
        let (size, window, binary) = (args.size, args.window, args.binary);
        tasks.push(tokio::spawn(async move {
            connection(i, ws, size, window, binary, stats).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stats.measuring.store(true, Ordering::Release);
    let start = Instant::now();
    let before = stats.received.load(Ordering::Acquire);
    let cpu_before = args.server_pid.map(process_cpu).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.duration.max(1))).await;
    let count = stats.received.load(Ordering::Acquire) - before;
    let elapsed = start.elapsed();
    let server_cpu = match (args.server_pid, cpu_before) {
        (Some(pid), Some(b)) => Some(process_cpu(pid)?.saturating_sub(b)),
        _ => None,
    };
    let cpu_us_per_msg = server_cpu.map(|c| c.as_secs_f64() * 1e6 / count.max(1) as f64);
    stats.measuring.store(false, Ordering::Release);
    stats.stop.store(true, Ordering::Release);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("connection failed: {e:#}");
            }
            Err(e) => bail!("connection task panicked: {e}"),
        }
    }
    let mut lat = std::mem::take(&mut *stats.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat[idx]) / 1000.0
    };
    let rate = count as f64 / elapsed.as_secs_f64();
    let cpu_text = cpu_us_per_msg.map_or(String::new(), |c| format!(", server CPU {c:.2} us/msg"));
    println!(
        "echo {} conns x {} in flight x {} B {}: {:.0} msg/s, p50 {:.3} ms, p99 {:.3} ms{}, {} messages, {} errors",
        args.connections,
        args.window,
        args.size,
        if args.binary { "binary" } else { "text" },
        rate,
        pct(0.5),
        pct(0.99),
        cpu_text,
        count,
        errors
    );
    if let Some(path) = &args.json {
        let json = format!(
            "{{\"mode\":\"echo\",\"url\":{:?},\"connections\":{},\"window\":{},\"size\":{},\"binary\":{},\"seconds\":{:.3},\"messages\":{},\"msg_per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"server_cpu_us_per_msg\":{},\"errors\":{}}}\n",
            args.url, args.connections, args.window, args.size, args.binary,
            elapsed.as_secs_f64(), count, rate, pct(0.5), pct(0.99),
            cpu_us_per_msg.map_or("null".to_owned(), |c| format!("{c:.3}")), errors
        );
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if errors > 0 {
        bail!("{errors} connections failed");
    }
    Ok(())
}

/// One connection's loop: keep `window` messages in flight and check each echo.
async fn connection(
    index: usize,
    mut ws: wshub::WebSocket,
    size: usize,
    window: usize,
    binary: bool,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    // Each payload starts with an 8-byte sequence number, then a pattern that
    // depends on connection and sequence, so a misrouted or corrupted echo shows.
    let make = |seq: u64| -> Message {
        let mut p = vec![0u8; size.max(8)];
        p[..8].copy_from_slice(&seq.to_le_bytes());
        for (j, b) in p[8..].iter_mut().enumerate() {
            *b = b'a' + ((index as u64 + seq + j as u64) % 26) as u8;
        }
        if binary {
            Message::Binary(p.into())
        } else {
            // ASCII only, so always valid UTF-8.
            Message::Text(String::from_utf8_lossy(&p).into_owned().into())
        }
    };
    let mut sent_at = std::collections::VecDeque::with_capacity(window);
    let mut next_seq = 0u64;
    let mut expect_seq = 0u64;
    let mut local_lat = Vec::new();
    for _ in 0..window {
        ws.send(make(next_seq))?;
        sent_at.push_back(Instant::now());
        next_seq += 1;
    }
    while !stats.stop.load(Ordering::Acquire) {
        let Some(msg) = ws.recv().await else {
            bail!("connection closed: {:?}", ws.disconnect());
        };
        let expected = make(expect_seq);
        if msg != expected {
            bail!("echo mismatch on connection {index} at message {expect_seq}");
        }
        expect_seq += 1;
        if let Some(t) = sent_at.pop_front() {
            if stats.measuring.load(Ordering::Relaxed) {
                stats.received.fetch_add(1, Ordering::Relaxed);
                if local_lat.len() < 100_000 {
                    local_lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
            }
        }
        ws.send(make(next_seq))?;
        sent_at.push_back(Instant::now());
        next_seq += 1;
    }
    let _ = ws.close(CloseCode::NORMAL, "");
    stats
        .latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(local_lat);
    Ok(())
}

//! `wshub bench echo`: N connections keep W messages in flight each against an
//! echo server for a fixed time (after a 1 s warm-up); every echo is checked
//! byte for byte against what was sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::BytesMut;
use clap::Args;
use wshub::CloseCode;

use super::cpu::CpuProbe;
use super::payload::Frames;
use super::stats::{AtomicHistogram, Progress, Report};
use super::{check_loopback, CommonArgs};

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
    /// Payload size in bytes (at least 32 for text, 16 for binary).
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Seconds to measure (after a 1 s warm-up).
    #[arg(short = 'd', long, default_value_t = 10)]
    duration: u64,
    #[command(flatten)]
    pub(super) common: CommonArgs,
}

struct Shared {
    start: Instant,
    received: Arc<AtomicU64>,
    measuring: AtomicBool,
    stop: AtomicBool,
    latency: AtomicHistogram,
    frames: Frames,
}

pub(super) async fn run(args: EchoArgs) -> anyhow::Result<()> {
    check_loopback(&args.url)?;
    if args.connections == 0 || args.window == 0 {
        bail!("--connections and --window must be at least 1");
    }
    let duration = Duration::from_secs(args.duration.clamp(1, 24 * 3600));
    let shared = Arc::new(Shared {
        start: Instant::now(),
        received: Arc::new(AtomicU64::new(0)),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        latency: AtomicHistogram::new(),
        frames: Frames::new(args.size, args.binary)?,
    });
    let builder = args.common.client();
    let mut sockets = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let what = format!("connection {i}");
        sockets.push(args.common.connect(&builder, &args.url, &what).await?);
    }
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let window = args.window;
        tasks.push(tokio::spawn(async move {
            connection(i as u64, ws, window, shared).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // First, as starting perf (`--count-syscalls`) blocks this thread for a
    // moment, which must not be in the measured window.
    let mut cpu = CpuProbe::start(&args.common)?;
    shared.measuring.store(true, Ordering::Release);
    let progress = Progress::start(
        "echo",
        args.common.quiet,
        duration,
        vec![("messages", Arc::clone(&shared.received))],
    );
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let count = shared.received.load(Ordering::Acquire);
    let elapsed = start.elapsed();
    let server_cost = cpu.finish(count)?;
    let generator = cpu.generator_percent();
    shared.measuring.store(false, Ordering::Release);
    shared.stop.store(true, Ordering::Release);
    let rates = progress.finish().await;
    let mut errors = 0u64;
    // A connection whose echo stopped coming is stuck in `recv`: bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                errors += 1;
                eprintln!("connection failed: {e:#}");
            }
            Ok(Err(e)) => bail!("connection task panicked: {e}"),
            Err(_) => {
                errors += 1;
                eprintln!("connection stuck: no echo for 10 s");
            }
        }
    }
    let rate = count as f64 / elapsed.as_secs_f64();
    let mut r = Report::new(
        "echo",
        format!(
            "echo {} conns x {} in flight x {} B {} against {}",
            args.connections,
            args.window,
            args.size,
            if args.binary { "binary" } else { "text" },
            args.url
        ),
    );
    args.common.describe(&mut r);
    r.field("url", args.url.as_str());
    r.field("connections", args.connections);
    r.field("window", args.window);
    r.field("size", args.size);
    r.field("binary", args.binary);
    r.seconds("measured", "seconds", elapsed);
    r.count("messages echoed", "messages", count);
    r.rate("throughput", "msg/s", "msg_per_sec", rate);
    r.latency("round trip", shared.latency.snapshot());
    server_cost.report(&mut r, "message", "server_cpu_us_per_msg");
    r.row(
        "generator CPU (% of a core)",
        generator.map_or("-".into(), |g| format!("{g:.1} %")),
        "generator_cpu_percent",
        generator,
    );
    r.count("failed connections", "errors", errors);
    r.rates("messages/s", rates);
    r.emit(&args.common)?;
    if errors > 0 {
        bail!("{errors} connections failed");
    }
    Ok(())
}

/// One connection's loop: keep `window` messages in flight and check each echo
/// against the exact bytes sent (the sequence number, the send time kept in a
/// ring, and the filler salted with the connection index).
async fn connection(
    index: u64,
    mut ws: wshub::WebSocket,
    window: usize,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let mut arena = BytesMut::new();
    let mut sent_at: VecDeque<u64> = VecDeque::with_capacity(window);
    let mut next_seq = 0u64;
    let mut expect_seq = 0u64;
    let now_ns = |s: &Shared| s.start.elapsed().as_nanos() as u64;
    for _ in 0..window {
        let t = now_ns(&shared);
        ws.send(shared.frames.write(&mut arena, next_seq, t, index))?;
        sent_at.push_back(t);
        next_seq += 1;
    }
    while !shared.stop.load(Ordering::Acquire) {
        let Some(msg) = ws.recv().await else {
            bail!("connection closed: {:?}", ws.disconnect());
        };
        let (seq, t) = shared
            .frames
            .check(&msg, index)
            .map_err(|e| anyhow::anyhow!("echo mismatch on connection {index}: {e}"))?;
        let Some(sent) = sent_at.pop_front() else {
            bail!("unexpected echo on connection {index}");
        };
        if seq != expect_seq || t != sent {
            bail!("echo mismatch on connection {index}: got message {seq}, expected {expect_seq}");
        }
        drop(msg);
        expect_seq += 1;
        let now = now_ns(&shared);
        if shared.measuring.load(Ordering::Relaxed) {
            shared.received.fetch_add(1, Ordering::Relaxed);
            shared.latency.record(now.saturating_sub(t));
        }
        ws.send(shared.frames.write(&mut arena, next_seq, now, index))?;
        sent_at.push_back(now);
        next_seq += 1;
    }
    let _ = ws.close(CloseCode::NORMAL, "");
    Ok(())
}

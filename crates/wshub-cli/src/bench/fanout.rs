//! `wshub bench fanout`: one sender and R receivers against a server that
//! relays every message to all other clients (the `broadcast` example).
//!
//! The sender paces messages at `--rate` per second, or keeps `--window`
//! messages ahead of the slowest receiver. Each message carries a sequence
//! number and its send time, so every receiver checks the bytes, counts lost,
//! duplicate and out-of-order messages, and records publish-to-delivery
//! latency. Before measuring, the sender sends probe messages until every
//! receiver has seen one: a server registers a client a moment after the
//! handshake, and a message before that would look lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::BytesMut;
use clap::Args;
use tokio::sync::{watch, Notify};
use wshub::{CloseCode, WebSocket};

use super::cpu::CpuProbe;
use super::payload::Frames;
use super::stats::{group, AtomicHistogram, Progress, Report, SeqTracker};
use super::{check_loopback, CommonArgs};

/// The sequence number of probe messages (not counted).
const PROBE: u64 = u64::MAX;

/// Options of `wshub bench fanout`.
#[derive(Args, Debug)]
pub(crate) struct FanoutArgs {
    /// Relay server URL (loopback only), e.g. ws://127.0.0.1:9001/.
    url: String,
    /// Receivers.
    #[arg(short = 'r', long, default_value_t = 100)]
    receivers: usize,
    /// Messages per second the sender sends.
    #[arg(long, default_value_t = 1000, conflicts_with = "window")]
    rate: u64,
    /// Instead of a fixed rate: keep this many messages ahead of the slowest
    /// receiver.
    #[arg(short = 'w', long)]
    window: Option<u64>,
    /// Payload size in bytes (at least 32 for text, 16 for binary).
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Seconds of sending.
    #[arg(short = 'd', long, default_value_t = 10)]
    duration: u64,
    /// Stop sending after this many messages even if time is left.
    #[arg(long, default_value_t = 100_000_000)]
    max_messages: u64,
    /// Seconds to wait after sending for messages still on their way.
    #[arg(long, default_value_t = 5)]
    drain: u64,
    #[command(flatten)]
    pub(super) common: CommonArgs,
}

struct Shared {
    start: Instant,
    frames: Frames,
    delivered: Arc<AtomicU64>,
    ready: AtomicU64,
    latency: AtomicHistogram,
    /// Per receiver: one past the highest sequence number seen (for `--window`).
    high: Vec<AtomicU64>,
    /// Woken by receivers in `--window` mode.
    progress: Notify,
    window_mode: bool,
}

/// The end of sending: how many were sent, and until when to wait for them.
type Finish = Option<(u64, tokio::time::Instant)>;

struct Outcome {
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    error: Option<String>,
}

pub(super) async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    check_loopback(&args.url)?;
    if args.receivers == 0 {
        bail!("--receivers must be at least 1");
    }
    if args.window == Some(0) || (args.window.is_none() && args.rate == 0) {
        bail!("--rate and --window must be at least 1");
    }
    let duration = Duration::from_secs(args.duration.clamp(1, 24 * 3600));
    let shared = Arc::new(Shared {
        start: Instant::now(),
        frames: Frames::new(args.size, args.binary)?,
        delivered: Arc::new(AtomicU64::new(0)),
        ready: AtomicU64::new(0),
        latency: AtomicHistogram::new(),
        high: (0..args.receivers).map(|_| AtomicU64::new(0)).collect(),
        progress: Notify::new(),
        window_mode: args.window.is_some(),
    });
    let builder = args.common.client();
    let sender = args
        .common
        .connect(&builder, &args.url, "the sender")
        .await?;
    let (finish_tx, finish_rx) = watch::channel::<Finish>(None);
    let mut receivers = Vec::with_capacity(args.receivers);
    for i in 0..args.receivers {
        let what = format!("receiver {i}");
        let ws = args.common.connect(&builder, &args.url, &what).await?;
        let shared = Arc::clone(&shared);
        let finish = finish_rx.clone();
        receivers.push(tokio::spawn(receiver(i, ws, shared, finish)));
    }

    // Probe until every receiver is registered by the relay.
    let mut arena = BytesMut::new();
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    let mut probes = 0u64;
    while shared.ready.load(Ordering::Acquire) < args.receivers as u64 {
        if Instant::now() > probe_deadline {
            bail!(
                "only {} of {} receivers got a relayed message within 30 s: is {} a relay (broadcast) server?",
                shared.ready.load(Ordering::Acquire),
                args.receivers,
                args.url
            );
        }
        sender.send(shared.frames.write(&mut arena, PROBE, probes, 0))?;
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let progress = Progress::start(
        "fanout",
        args.common.quiet,
        duration,
        vec![("deliveries", Arc::clone(&shared.delivered))],
    );
    let mut cpu = CpuProbe::start(&args.common)?;
    let delivered_before = shared.delivered.load(Ordering::Acquire);
    let send_start = Instant::now();
    let deadline = send_start + duration;
    let mut sent = 0u64;
    let now_ns = |s: &Shared| s.start.elapsed().as_nanos() as u64;
    match args.window {
        None => {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = Instant::now();
                if now >= deadline || sent >= args.max_messages {
                    break;
                }
                let due = ((now - send_start).as_secs_f64() * args.rate as f64) as u64;
                let due = due.min(args.max_messages);
                // At most 100 ms worth in one burst after a stall.
                let burst = (args.rate / 10).max(1);
                let n = due.saturating_sub(sent).min(burst);
                for _ in 0..n {
                    let t = now_ns(&shared);
                    sender.send(shared.frames.write(&mut arena, sent, t, 0))?;
                    sent += 1;
                }
            }
        }
        Some(window) => loop {
            if Instant::now() >= deadline || sent >= args.max_messages {
                break;
            }
            let notified = shared.progress.notified();
            let slowest = shared
                .high
                .iter()
                .map(|h| h.load(Ordering::Acquire))
                .min()
                .unwrap_or(0);
            let limit = (slowest + window).min(args.max_messages);
            if sent < limit {
                while sent < limit {
                    let t = now_ns(&shared);
                    sender.send(shared.frames.write(&mut arena, sent, t, 0))?;
                    sent += 1;
                }
            } else {
                let _ = tokio::time::timeout_at(deadline.into(), notified).await;
            }
        },
    }
    let send_time = send_start.elapsed();
    let delivered = shared.delivered.load(Ordering::Acquire) - delivered_before;
    let server_cost = cpu.finish(delivered)?;
    let generator = cpu.generator_percent();
    let drain_deadline =
        tokio::time::Instant::now() + Duration::from_secs(args.drain.clamp(1, 600));
    let _ = finish_tx.send(Some((sent, drain_deadline)));

    let mut outcomes = Vec::with_capacity(receivers.len());
    for r in receivers {
        // Receivers stop by the drain deadline; the margin covers the last wake-up.
        match tokio::time::timeout_at(drain_deadline + Duration::from_secs(5), r).await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => bail!("receiver task panicked: {e}"),
            Err(_) => bail!("a receiver did not stop after the drain time"),
        }
    }
    let rates = progress.finish().await;
    let _ = sender.close(CloseCode::NORMAL, "");
    let total_delivered = shared.delivered.load(Ordering::Acquire);

    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let unique = sum(|o| o.unique);
    let dups = sum(|o| o.duplicates);
    let ooo = sum(|o| o.out_of_order);
    let lost = (sent * args.receivers as u64).saturating_sub(unique);
    let rate = delivered as f64 / send_time.as_secs_f64();

    let mut r = Report::new(
        "fanout",
        format!(
            "fanout 1 sender -> {} receivers, {} x {} B {} against {}",
            args.receivers,
            match args.window {
                Some(w) => format!("window {w}"),
                None => format!("{} msg/s", group(args.rate)),
            },
            args.size,
            if args.binary { "binary" } else { "text" },
            args.url
        ),
    );
    args.common.describe(&mut r);
    r.field("url", args.url.as_str());
    r.field("receivers", args.receivers);
    r.field("rate", args.window.map_or(Some(args.rate), |_| None));
    r.field("window", args.window);
    r.field("size", args.size);
    r.field("binary", args.binary);
    r.seconds("sending", "seconds", send_time);
    r.count("messages sent", "sent", sent);
    r.rate(
        "sent per second",
        "",
        "sent_per_sec",
        sent as f64 / send_time.as_secs_f64(),
    );
    r.count("deliveries", "deliveries", total_delivered);
    r.rate("deliveries per second", "", "deliveries_per_sec", rate);
    r.latency("publish to delivery", shared.latency.snapshot());
    r.count("lost", "lost", lost);
    r.count("duplicates", "duplicates", dups);
    r.count("out of order", "out_of_order", ooo);
    r.count("failed receivers", "errors", failed.len() as u64);
    server_cost.report(&mut r, "delivery", "server_cpu_us_per_delivery");
    r.row(
        "generator CPU (% of a core)",
        generator.map_or("-".into(), |g| format!("{g:.1} %")),
        "generator_cpu_percent",
        generator,
    );
    r.rates("deliveries/s", rates);
    r.emit(&args.common)?;
    for e in failed.iter().take(5) {
        eprintln!("receiver failed: {e}");
    }
    if !failed.is_empty() {
        bail!("{} receivers failed", failed.len());
    }
    Ok(())
}

/// One receiver: check every message, track its sequence, record latency.
async fn receiver(
    index: usize,
    mut ws: WebSocket,
    shared: Arc<Shared>,
    mut finish: watch::Receiver<Finish>,
) -> Outcome {
    let mut seq = SeqTracker::new();
    let mut ready = false;
    let mut end: Finish = None;
    let error = loop {
        if let Some((total, _)) = end {
            if seq.unique >= total {
                break None;
            }
        }
        let msg = match end {
            None => tokio::select! {
                m = ws.recv() => m,
                _ = finish.changed() => {
                    end = *finish.borrow();
                    continue;
                }
            },
            Some((_, deadline)) => match tokio::time::timeout_at(deadline, ws.recv()).await {
                Ok(m) => m,
                Err(_) => break None,
            },
        };
        let Some(msg) = msg else {
            break Some(format!(
                "receiver {index}: connection closed: {:?}",
                ws.disconnect()
            ));
        };
        let (s, t) = match shared.frames.check(&msg, 0) {
            Ok(v) => v,
            Err(e) => break Some(format!("receiver {index}: {e}")),
        };
        if s == PROBE {
            if !ready {
                ready = true;
                shared.ready.fetch_add(1, Ordering::AcqRel);
            }
            continue;
        }
        let now = shared.start.elapsed().as_nanos() as u64;
        shared.latency.record(now.saturating_sub(t));
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        seq.record(s);
        if shared.window_mode {
            shared.high[index].store(seq.high(), Ordering::Release);
            shared.progress.notify_one();
        }
    };
    let _ = ws.close(CloseCode::NORMAL, "");
    Outcome {
        unique: seq.unique,
        duplicates: seq.duplicates,
        out_of_order: seq.out_of_order,
        error,
    }
}

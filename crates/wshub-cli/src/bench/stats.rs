//! Measuring and reporting: a lock-free log-linear latency histogram, the
//! per-receiver sequence tracker (lost / duplicate / out-of-order), the
//! progress line, and the report (table, JSON, SVG).
//!
//! The histogram is hand-written rather than `hdrhistogram`: it is 60 lines,
//! needs no dependency, and recording is one relaxed `fetch_add` on a shared
//! bucket (no lock, no merge), with ≤ 3.2 % relative error.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Map, Value};

/// Sub-buckets per power of two: 2^5 = 32, so a bucket is at most 1/32 wide.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

fn bucket_of(v: u64) -> usize {
    if v < (2 * SUB) as u64 {
        v as usize
    } else {
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        ((shift as usize) << SUB_BITS) + (v >> shift) as usize
    }
}

/// The smallest value of bucket `i`, and its width.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < 2 * SUB {
        (i as u64, 1)
    } else {
        let shift = (i >> SUB_BITS) - 1;
        let m = (i & (SUB - 1)) + SUB;
        ((m as u64) << shift, 1 << shift)
    }
}

/// Latencies in nanoseconds, recorded concurrently.
pub(crate) struct AtomicHistogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

impl AtomicHistogram {
    pub(crate) fn new() -> AtomicHistogram {
        AtomicHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of an [`AtomicHistogram`].
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    max: u64,
}

impl Histogram {
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `p` quantile (0..=1) in nanoseconds (the middle of its bucket).
    pub(crate) fn quantile(&self, p: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * p).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket_range(i);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Non-empty buckets as (lower bound ns, width ns, count).
    fn bins(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                let (low, width) = bucket_range(i);
                (low, width, c)
            })
    }
}

/// Lost / duplicate / out-of-order detection for one receiver's sequence
/// numbers, with a sliding window of `WINDOW` recent numbers (so memory stays
/// fixed however long the run is). A number older than the window counts as
/// out of order (it cannot be told from a duplicate any more).
pub(crate) struct SeqTracker {
    /// One past the highest number seen.
    hi: u64,
    bits: Box<[u64; WINDOW / 64]>,
    pub(crate) unique: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
}

const WINDOW: usize = 1 << 14;

impl SeqTracker {
    pub(crate) fn new() -> SeqTracker {
        SeqTracker {
            hi: 0,
            bits: Box::new([0; WINDOW / 64]),
            unique: 0,
            duplicates: 0,
            out_of_order: 0,
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = (seq % WINDOW as u64) as usize;
        (i / 64, 1 << (i % 64))
    }

    /// One past the highest number seen.
    pub(crate) fn high(&self) -> u64 {
        self.hi
    }

    pub(crate) fn record(&mut self, seq: u64) {
        if seq >= self.hi {
            if seq - self.hi >= WINDOW as u64 {
                self.bits.fill(0);
            } else {
                for s in self.hi..seq {
                    let (w, m) = Self::bit(s);
                    self.bits[w] &= !m;
                }
            }
            let (w, m) = Self::bit(seq);
            self.bits[w] |= m;
            self.hi = seq + 1;
            self.unique += 1;
        } else if self.hi - seq > WINDOW as u64 {
            self.out_of_order += 1;
            self.unique += 1;
        } else {
            let (w, m) = Self::bit(seq);
            if self.bits[w] & m != 0 {
                self.duplicates += 1;
            } else {
                self.bits[w] |= m;
                self.out_of_order += 1;
                self.unique += 1;
            }
        }
    }
}

/// The progress line: every second, the counters on stderr (`\r`, one line),
/// and the first counter's rate recorded for the throughput chart.
pub(crate) struct Progress {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl Progress {
    /// Starts sampling `counters` (name, value); the first is the rate shown
    /// and charted.
    pub(crate) fn start(
        mode: &'static str,
        quiet: bool,
        total: Duration,
        counters: Vec<(&'static str, Arc<AtomicU64>)>,
    ) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut rates = Vec::new();
            let mut last = counters
                .first()
                .map_or(0, |(_, c)| c.load(Ordering::Relaxed));
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            let mut line = String::new();
            while !flag.load(Ordering::Acquire) {
                // The tick after `finish` still records its second, so even a
                // run shorter than the first tick has one sample to chart.
                tick.tick().await;
                let now = counters
                    .first()
                    .map_or(0, |(_, c)| c.load(Ordering::Relaxed));
                let rate = now.saturating_sub(last) as f64;
                last = now;
                rates.push(rate);
                if !quiet {
                    line.clear();
                    let _ = write!(
                        line,
                        "\r{mode} {:>4.0}/{:.0} s  {}/s",
                        start.elapsed().as_secs_f64(),
                        total.as_secs_f64(),
                        group(rate as u64)
                    );
                    for (name, c) in &counters {
                        let _ = write!(line, "  {name} {}", group(c.load(Ordering::Relaxed)));
                    }
                    eprint!("{line}   ");
                }
            }
            if !quiet {
                eprintln!();
            }
            rates
        });
        Progress { stop, task }
    }

    /// Stops the line; returns the per-second rates.
    pub(crate) async fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap_or_default()
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A run's results: table rows, JSON fields, and the charts' data.
pub(crate) struct Report {
    title: String,
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
    latency: Option<Histogram>,
    rates: Vec<f64>,
    rate_unit: &'static str,
}

impl Report {
    pub(crate) fn new(mode: &'static str, title: String) -> Report {
        let mut json = Map::new();
        json.insert("mode".into(), mode.into());
        Report {
            title,
            rows: Vec::new(),
            json,
            latency: None,
            rates: Vec::new(),
            rate_unit: "messages/s",
        }
    }

    /// A JSON field only.
    pub(crate) fn field(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.into(), value.into());
    }

    /// A table row and a JSON field.
    pub(crate) fn row(&mut self, label: &str, shown: String, key: &str, value: impl Into<Value>) {
        self.rows.push((label.into(), shown));
        self.field(key, value);
    }

    /// A duration: table row in seconds (2 decimals) and JSON field in
    /// seconds (3 decimals).
    pub(crate) fn seconds(&mut self, label: &str, key: &str, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        self.row(
            label,
            format!("{secs:.2} s"),
            key,
            (secs * 1000.0).round() / 1000.0,
        );
    }

    /// A rate: table row (grouped digits, with `unit` when given) and JSON
    /// field (1 decimal).
    pub(crate) fn rate(&mut self, label: &str, unit: &str, key: &str, per_sec: f64) {
        let shown = if unit.is_empty() {
            group(per_sec as u64)
        } else {
            format!("{} {unit}", group(per_sec as u64))
        };
        self.row(label, shown, key, (per_sec * 10.0).round() / 10.0);
    }

    /// A count: table row (grouped digits) and JSON field.
    pub(crate) fn count(&mut self, label: &str, key: &str, n: u64) {
        self.row(label, group(n), key, n);
    }

    /// Latency percentiles (rows and `p50_ms`, `p90_ms`, `p99_ms`, `max_ms`).
    pub(crate) fn latency(&mut self, label: &str, h: Histogram) {
        let ms = |ns: u64| ns as f64 / 1e6;
        let (p50, p90, p99, max) = (
            ms(h.quantile(0.5)),
            ms(h.quantile(0.9)),
            ms(h.quantile(0.99)),
            ms(h.max()),
        );
        self.rows.push((
            format!("{label} p50 / p90 / p99 / max"),
            format!("{p50:.3} / {p90:.3} / {p99:.3} / {max:.3} ms"),
        ));
        for (k, v) in [
            ("p50_ms", p50),
            ("p90_ms", p90),
            ("p99_ms", p99),
            ("max_ms", max),
        ] {
            self.field(k, (v * 1000.0).round() / 1000.0);
        }
        self.field("latency_samples", h.count());
        self.latency = Some(h);
    }

    /// The per-second rates for the throughput chart.
    pub(crate) fn rates(&mut self, unit: &'static str, rates: Vec<f64>) {
        self.field("per_second", rates.clone());
        self.rates = rates;
        self.rate_unit = unit;
    }

    /// Prints the table and writes the JSON and SVG files asked for.
    pub(crate) fn emit(&self, common: &super::CommonArgs) -> anyhow::Result<()> {
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        println!("{}", self.title);
        for (label, value) in &self.rows {
            println!("  {label:<width$}  {value}");
        }
        if let Some(path) = &common.json {
            let mut text = serde_json::to_string_pretty(&self.json)?;
            text.push('\n');
            write(path, &text)?;
        }
        if let Some(path) = &common.svg {
            write(path, &self.svg())?;
        }
        Ok(())
    }

    /// Two charts: the latency histogram (log-scaled latency axis) and the
    /// throughput per second.
    fn svg(&self) -> String {
        const W: f64 = 720.0;
        const H: f64 = 240.0;
        const L: f64 = 70.0;
        const R: f64 = 20.0;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif" font-size="12">"#,
            2.0 * H + 60.0
        );
        let _ = write!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{L}" y="20" font-size="14">{}</text>"#,
            escape(&self.title)
        );
        // Latency histogram.
        let top = 40.0;
        let (x0, x1) = (L, W - R);
        let (y0, y1) = (top + H - 40.0, top + 20.0);
        let _ = write!(
            s,
            r#"<text x="{L}" y="{}">latency (log scale) — messages per bucket</text>"#,
            top + 12.0
        );
        axes(&mut s, x0, x1, y0, y1);
        match &self.latency {
            Some(h) if h.count() > 0 => {
                let lo = h
                    .bins()
                    .next()
                    .map_or(1.0, |(l, _, _)| (l.max(1) as f64).log10().floor());
                let hi = (h.max().max(10) as f64).log10().ceil().max(lo + 1.0);
                let xs = |ns: f64| x0 + (ns.max(1.0).log10() - lo) / (hi - lo) * (x1 - x0);
                // Re-bin to 8 bins per decade so bars have a readable width.
                let mut bins = vec![0u64; ((hi - lo) * 8.0) as usize + 1];
                for (low, width, c) in h.bins() {
                    let mid = (low + width / 2).max(1) as f64;
                    let b = ((mid.log10() - lo) * 8.0).floor().max(0.0) as usize;
                    if let Some(slot) = bins.get_mut(b) {
                        *slot += c;
                    }
                }
                let peak = bins.iter().copied().max().unwrap_or(1).max(1) as f64;
                for (b, &c) in bins.iter().enumerate() {
                    if c == 0 {
                        continue;
                    }
                    let a = 10f64.powf(lo + b as f64 / 8.0);
                    let z = 10f64.powf(lo + (b + 1) as f64 / 8.0);
                    let (xa, xz) = (xs(a), xs(z));
                    let y = y0 - (c as f64 / peak) * (y0 - y1);
                    let _ = write!(
                        s,
                        r##"<rect x="{xa:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#4a7bd0"><title>{}: {c}</title></rect>"##,
                        (xz - xa - 1.0).max(1.0),
                        y0 - y,
                        duration_label(a)
                    );
                }
                let mut d = lo;
                while d <= hi {
                    let x = xs(10f64.powf(d));
                    let _ = write!(
                        s,
                        r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                        y0 + 16.0,
                        duration_label(10f64.powf(d))
                    );
                    d += 1.0;
                }
                for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
                    let x = xs(h.quantile(q) as f64);
                    let _ = write!(
                        s,
                        r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}" stroke="#d04a4a" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#d04a4a">{name}</text>"##,
                        x + 3.0,
                        y1 + 12.0
                    );
                }
                let _ = write!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                    x0 - 4.0,
                    y1 + 4.0,
                    group(peak as u64)
                );
            }
            _ => {
                let _ = write!(
                    s,
                    r#"<text x="{}" y="{}">no latency samples</text>"#,
                    x0 + 10.0,
                    (y0 + y1) / 2.0
                );
            }
        }
        // Throughput over time.
        let top = top + H;
        let (y0, y1) = (top + H - 40.0, top + 20.0);
        let _ = write!(
            s,
            r#"<text x="{L}" y="{}">{} over time (s)</text>"#,
            top + 12.0,
            self.rate_unit
        );
        axes(&mut s, x0, x1, y0, y1);
        if self.rates.is_empty() {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}">no samples</text>"#,
                x0 + 10.0,
                (y0 + y1) / 2.0
            );
        } else {
            let peak = self.rates.iter().copied().fold(1.0, f64::max);
            let n = self.rates.len() as f64;
            let pts: Vec<String> = self
                .rates
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let x = x0 + (i as f64 + 1.0) / n * (x1 - x0);
                    let y = y0 - r / peak * (y0 - y1);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                s,
                r##"<polyline fill="none" stroke="#4a7bd0" stroke-width="2" points="{x0:.1},{y0:.1} {}"/>"##,
                pts.join(" ")
            );
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{x1}" y="{}" text-anchor="end">{n}</text><text x="{x0}" y="{}" text-anchor="middle">0</text>"#,
                x0 - 4.0,
                y1 + 4.0,
                group(peak as u64),
                y0 + 16.0,
                y0 + 16.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn axes(s: &mut String, x0: f64, x1: f64, y0: f64, y1: f64) {
    let _ = write!(
        s,
        r#"<path d="M{x0},{y1} V{y0} H{x1}" fill="none" stroke="black"/>"#
    );
}

fn duration_label(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{}s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{}µs", ns / 1e3)
    } else {
        format!("{ns}ns")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_precise() {
        let mut prev_end = 0;
        for i in 0..BUCKETS {
            let (low, width) = bucket_range(i);
            assert_eq!(low, prev_end, "bucket {i}");
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(low + (width - 1)), i);
            prev_end = low.wrapping_add(width);
            if low >= 64 {
                assert!(width * 32 <= low);
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let h = AtomicHistogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.04, "{p50}");
        assert_eq!(s.max(), 1_000_000);
        assert_eq!(s.count(), 1000);
    }

    #[test]
    fn tracker_counts() {
        let mut t = SeqTracker::new();
        for s in [0, 1, 2, 4, 3, 3, 5, 1] {
            t.record(s);
        }
        assert_eq!(
            (t.unique, t.duplicates, t.out_of_order, t.high()),
            (6, 2, 1, 6)
        );
        t.record(100_000);
        t.record(10);
        assert_eq!((t.unique, t.out_of_order), (8, 2));
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let h = AtomicHistogram::new();
        for v in [1_000, 20_000, 300_000, 300_500] {
            h.record(v);
        }
        let mut r = Report::new("echo", "t <1>".into());
        r.latency("latency", h.snapshot());
        r.rates("messages/s", vec![1.0, 5.0, 3.0]);
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("<polyline") && svg.contains("<rect x="));
        assert!(svg.contains("t &lt;1&gt;"));
    }
}

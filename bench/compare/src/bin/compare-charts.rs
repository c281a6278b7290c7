//! Draws the comparison charts (PNG) from the results JSON that
//! `bench/compare.sh` writes:
//!
//! - `throughput.png`: messages (echo) or deliveries (fan-out) per second;
//! - `cpu-per-message.png`: server CPU µs per message or delivery;
//! - `latency.png`: p99 (wide bar) and p50 (narrow bar) in ms;
//! - `idle-memory.png`: server bytes of RSS per idle connection.
//!
//! One panel per case, one bar per server, in the order the JSON lists them.
//!
//! ```text
//! compare-charts RESULTS.json OUT_DIR [FONT.ttf]
//! ```
//!
//! The input is `{"servers": [NAME…], "rows": [ROW…]}`; a row has `case`,
//! `kind` (`echo`, `fanout`, `hub` or `idle`), `server`, and the medians
//! `throughput`, `p50_ms`, `p99_ms`, `cpu_us_per_msg`, `bytes_per_conn`
//! (absent or null when they do not apply). Text is drawn with a TrueType font:
//! the third argument, or DejaVu Sans / Liberation Sans from /usr/share/fonts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

/// One server's median figures in one case.
struct Row {
    case: String,
    kind: String,
    server: String,
    values: Value,
}

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

const COLOURS: &[RGBColor] = &[
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(out)) = (args.first(), args.get(1)) else {
        bail!("usage: compare-charts RESULTS.json OUT_DIR [FONT.ttf]");
    };
    load_font(args.get(2).map(PathBuf::from))?;
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {input}"))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("parsing {input}"))?;
    let servers: Vec<String> = json["servers"]
        .as_array()
        .context("no \"servers\" list")?
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    let rows: Vec<Row> = json["rows"]
        .as_array()
        .context("no \"rows\" list")?
        .iter()
        .map(|r| -> anyhow::Result<Row> {
            let field = |k: &str| {
                r[k].as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("a row without {k:?}: {r}"))
            };
            Ok(Row {
                case: field("case")?,
                kind: field("kind")?,
                server: field("server")?,
                values: r.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let out = Path::new(out);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let loaded = |r: &Row| r.kind != "idle";
    let written = [
        chart(
            &out.join("throughput.png"),
            "Throughput (messages or deliveries per second)",
            &servers,
            &rows,
            loaded,
            &["throughput"],
        )?,
        chart(
            &out.join("cpu-per-message.png"),
            "Server CPU per message or delivery (µs, lower is better)",
            &servers,
            &rows,
            loaded,
            &["cpu_us_per_msg"],
        )?,
        chart(
            &out.join("latency.png"),
            "Latency in ms: p99 (wide bar) and p50 (narrow bar), lower is better",
            &servers,
            &rows,
            loaded,
            &["p99_ms", "p50_ms"],
        )?,
        chart(
            &out.join("idle-memory.png"),
            "Server RSS per idle connection (bytes, lower is better)",
            &servers,
            &rows,
            |r| r.kind == "idle",
            &["bytes_per_conn"],
        )?,
    ];
    for path in written.iter().flatten() {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn load_font(explicit: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match explicit {
        Some(p) => p,
        None => FONT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context(
                "no TrueType font found (apt-get install fonts-dejavu-core, or pass FONT.ttf)",
            )?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    for style in [FontStyle::Normal, FontStyle::Bold] {
        plotters::style::register_font("sans-serif", style, bytes)
            .map_err(|_| anyhow::anyhow!("{} is not a usable TrueType font", path.display()))?;
    }
    Ok(())
}

/// One PNG: a panel per case that `include` accepts, a bar per server for each
/// of `keys` (drawn over each other, the first widest). Returns the path, or
/// `None` when no row has data.
fn chart(
    path: &Path,
    title: &str,
    servers: &[String],
    rows: &[Row],
    include: impl Fn(&Row) -> bool,
    keys: &[&str],
) -> anyhow::Result<Option<PathBuf>> {
    let mut cases: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| include(r)) {
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    if cases.is_empty() {
        return Ok(None);
    }
    let cols = cases.len().min(3);
    let grid_rows = cases.len().div_ceil(cols);
    let (w, h) = (520 * cols as u32, 60 + 340 * grid_rows as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root
        .titled(title, ("sans-serif", 22).into_font())
        .map_err(draw_err)?;
    let panels = root.split_evenly((grid_rows, cols));
    for (case, panel) in cases.iter().zip(panels.iter()) {
        let value = |server: &str, key: &str| -> Option<f64> {
            rows.iter()
                .find(|r| r.case == *case && r.server == server)
                .and_then(|r| r.values[key].as_f64())
        };
        let present: Vec<&String> = servers
            .iter()
            .filter(|s| keys.iter().any(|k| value(s, k).is_some()))
            .collect();
        if present.is_empty() {
            continue;
        }
        let top = present
            .iter()
            .flat_map(|s| keys.iter().filter_map(|k| value(s, k)))
            .fold(0.0f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.15;
        let n = present.len() as u32;
        let mut c = ChartBuilder::on(panel)
            .caption(*case, ("sans-serif", 17).into_font())
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(62)
            // A segmented range has a slot per value of the range, its end
            // included: 0..n-1 gives exactly n bars.
            .build_cartesian_2d(
                (0u32..n.saturating_sub(1).max(1)).into_segmented(),
                0f64..top,
            )
            .map_err(draw_err)?;
        let names: Vec<String> = present.iter().map(|s| label(s)).collect();
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len() + 1)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| short(*v))
            .label_style(("sans-serif", 13).into_font())
            .draw()
            .map_err(draw_err)?;
        for (k, key) in keys.iter().enumerate() {
            let margin = 6 + 18 * k as u32;
            for (i, s) in present.iter().enumerate() {
                let Some(v) = value(s, key) else { continue };
                let colour = COLOURS[i % COLOURS.len()];
                let fill = if k == 0 && keys.len() > 1 {
                    colour.mix(0.35).filled()
                } else {
                    colour.filled()
                };
                c.draw_series(
                    Histogram::vertical(&c)
                        .style(fill)
                        .margin(margin)
                        .data([(i as u32, v)]),
                )
                .map_err(draw_err)?;
                if k == 0 {
                    let label = short(v);
                    c.draw_series(std::iter::once(Text::new(
                        label,
                        (SegmentValue::CenterOf(i as u32), v),
                        ("sans-serif", 12).into_font(),
                    )))
                    .map_err(draw_err)?;
                }
            }
        }
    }
    root.present().map_err(draw_err)?;
    Ok(Some(path.to_path_buf()))
}

/// A server's name as short as the axis needs it.
fn label(server: &str) -> String {
    match server {
        "tokio-tungstenite" => "tungstenite".into(),
        other => other.into(),
    }
}

/// 1234567 → "1.23M", 0.0123 → "0.012".
fn short(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

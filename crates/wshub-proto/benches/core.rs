//! Micro-benchmarks of the protocol core (criterion): frame header encode and
//! parse, unmasking, UTF-8 validation, permessage-deflate, the upgrade request
//! parser, and the whole receive path of a server `Connection` (masked frames
//! in, messages out).
//!
//! `cargo bench -p wshub-proto` runs them; CI only builds them
//! (`cargo bench --no-run`). Throughput is reported per byte (GB/s) or per
//! element (messages/s), so results read directly against the targets in
//! `bench/RESULTS.md`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wshub_proto::connection::Config;
use wshub_proto::deflate::{Deflater, Inflater};
use wshub_proto::frame::{encode_frame, FrameHeader, OpCode};
use wshub_proto::handshake::parse_request;
use wshub_proto::mask::apply_mask;
use wshub_proto::utf8::Utf8Validator;
use wshub_proto::{Connection, Event, Limits, Role};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Text that compresses like chat JSON and has multi-byte characters (may
/// end inside a character; see [`utf8_prefix`]).
fn sample_text(len: usize) -> Vec<u8> {
    let unit = "{\"user\":\"ada\",\"text\":\"héllo wörld — ünïcode ✓\",\"n\":12345}";
    unit.bytes().cycle().take(len).collect()
}

fn utf8_prefix(mut v: Vec<u8>) -> Vec<u8> {
    while std::str::from_utf8(&v).is_err() {
        v.pop();
    }
    v
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [64usize, 16 * 1024] {
        let payload = vec![b'x'; size];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, p| {
            let mut out = Vec::with_capacity(size + 14);
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, OpCode::Text, true, false, None, black_box(p));
                black_box(out.len())
            })
        });
        let mut framed = Vec::new();
        encode_frame(&mut framed, OpCode::Text, true, false, Some(MASK), &payload);
        g.bench_with_input(BenchmarkId::new("parse_header", size), &framed, |b, f| {
            b.iter(|| black_box(FrameHeader::parse(black_box(f)).unwrap()))
        });
    }
    g.finish();
}

fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for size in [64usize, 1024, 64 * 1024, 1024 * 1024] {
        let mut buf = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), MASK, 0))
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let ascii = vec![b'a'; 64 * 1024];
    let mixed = utf8_prefix(sample_text(64 * 1024));
    for (name, data) in [("ascii_64k", &ascii), ("mixed_64k", &mixed)] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| Utf8Validator::validate(black_box(data)).unwrap())
        });
    }
    // Incremental, in 1 KiB fragments (as a fragmented message arrives).
    g.throughput(Throughput::Bytes(mixed.len() as u64));
    g.bench_function("mixed_64k_in_1k_fragments", |b| {
        b.iter(|| {
            let mut v = Utf8Validator::default();
            for chunk in mixed.chunks(1024) {
                v.feed(black_box(chunk)).unwrap();
            }
            v.finish().unwrap();
        })
    });
    g.finish();
}

fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    for size in [256usize, 16 * 1024] {
        let text = utf8_prefix(sample_text(size));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("compress_no_context", size),
            &text,
            |b, t| {
                let mut d = Deflater::new(15, 1, true).unwrap();
                let mut out = Vec::with_capacity(size);
                b.iter(|| {
                    out.clear();
                    d.compress(black_box(t), &mut out).unwrap();
                    black_box(out.len())
                })
            },
        );
        let mut compressed = Vec::new();
        Deflater::new(15, 1, true)
            .unwrap()
            .compress(&text, &mut compressed)
            .unwrap();
        g.bench_with_input(BenchmarkId::new("inflate", size), &compressed, |b, z| {
            let mut i = Inflater::new(15, true).unwrap();
            let mut out = Vec::with_capacity(size);
            b.iter(|| {
                out.clear();
                i.decompress(black_box(z), true, &mut out, usize::MAX)
                    .unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let req = b"GET /ws?room=lobby HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wshub.v1\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nOrigin: http://127.0.0.1:8080\r\nCookie: session=abcdef0123456789\r\n\r\n";
    let limits = Limits::default();
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_request", |b| {
        b.iter(|| black_box(parse_request(black_box(req), &limits).unwrap()))
    });
    g.finish();
}

/// The receive path: 1000 masked text frames in one read, decoded,
/// unmasked, validated and returned as messages.
fn connection(c: &mut Criterion) {
    let mut g = c.benchmark_group("connection_receive");
    for size in [64usize, 1024] {
        let payload = utf8_prefix(sample_text(size));
        let mut wire = Vec::new();
        for _ in 0..1000 {
            encode_frame(&mut wire, OpCode::Text, true, false, Some(MASK), &payload);
        }
        g.throughput(Throughput::Elements(1000));
        g.bench_with_input(BenchmarkId::from_parameter(size), &wire, |b, w| {
            let now = Instant::now();
            let mut conn = Connection::new(
                Config::new(Role::Server).with_heartbeat(None, std::time::Duration::from_secs(10)),
                now,
            );
            let mut buf = w.clone();
            b.iter(|| {
                buf.copy_from_slice(w);
                conn.handle_input(now, &mut buf).unwrap();
                let mut n = 0;
                while let Some(ev) = conn.poll_event() {
                    if let Event::Message(m) = ev {
                        n += m.len();
                    }
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frames, unmask, utf8, deflate, handshake, connection);
criterion_main!(benches);

//! `wshub bench`: a load generator on wshub's own client (the client role of
//! the protocol core), for loopback targets only.
//!
//! Modes: `echo` (N connections × W messages in flight), `fanout` (one sender,
//! R receivers of a relay server), `hub` (`wshub.v1` subscribers, publications
//! through the HTTP API or a client) and `idle` (N idle connections, to measure
//! the server's memory per connection).
//!
//! Every mode checks every payload byte for byte, shows a progress line on
//! stderr, prints a summary table on stdout, and can write the summary as JSON
//! (`--json`) and a latency histogram and throughput-over-time chart as SVG
//! (`--svg`). The generator keeps its own cost low so that it is not what limits
//! the figures: payloads are written into one reused buffer (no allocation per
//! message), received payloads are compared in place, latencies go into a
//! fixed-size lock-free histogram, and the client drivers batch all queued
//! frames into one vectored write.
//!
//! Layout: [`payload`] (message formats and checks), [`stats`] (histogram,
//! sequence tracking, progress, report, SVG), [`cpu`] (the server's CPU time
//! and syscalls over the measured window), one file per mode.

mod cpu;
mod echo;
mod fanout;
mod hub;
mod idle;
mod payload;
mod stats;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use wshub::client::ClientBuilder;
use wshub::WebSocket;

/// `wshub bench` modes.
#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Echo load: N connections × W messages in flight.
    Echo(echo::EchoArgs),
    /// Fan-out: one sender and R receivers against a server that relays each
    /// message to all other clients (e.g. the `broadcast` example).
    Fanout(fanout::FanoutArgs),
    /// Hub load: `wshub.v1` subscribers on channels, publications through the
    /// HTTP API or a client connection.
    Hub(hub::HubArgs),
    /// Hold N idle connections (server memory per connection).
    Idle(idle::IdleArgs),
}

/// Options every mode has.
#[derive(Args, Debug, Clone)]
pub(crate) struct CommonArgs {
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency histogram and throughput over time as SVG to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// PID of the server process (Linux): report its CPU time per message and
    /// the kernel's share of it (or its memory, for `idle`), read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Count the server's send, receive and poll syscalls per message over
    /// the measured window with `perf stat` (Debian: linux-perf; needs
    /// --server-pid and access to the syscall tracepoints).
    #[arg(long)]
    count_syscalls: bool,
    /// No progress line on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Runtime threads of the generator (1 = a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Offer permessage-deflate (RFC 7692, default parameters) on every
    /// connection, and fail if the server does not accept it.
    #[arg(long)]
    deflate: bool,
}

impl CommonArgs {
    /// A client builder with these options (`--deflate`).
    pub(crate) fn client(&self) -> ClientBuilder {
        ClientBuilder::new().deflate(self.deflate)
    }

    /// Connects `what` to `url` with `builder` (made by [`CommonArgs::client`]);
    /// with `--deflate`, fails unless the server accepted permessage-deflate:
    /// a run meant to measure compression must not quietly measure without it.
    pub(crate) async fn connect(
        &self,
        builder: &ClientBuilder,
        url: &str,
        what: &str,
    ) -> anyhow::Result<WebSocket> {
        let ws = builder
            .connect(url)
            .await
            .with_context(|| format!("connecting {what} to {url}"))?;
        if self.deflate && !ws.is_compressed() {
            bail!("{what}: the server did not accept permessage-deflate (--deflate)");
        }
        Ok(ws)
    }

    /// Records in the report whether permessage-deflate was on.
    pub(crate) fn describe(&self, report: &mut stats::Report) {
        report.row(
            "permessage-deflate",
            if self.deflate { "on" } else { "off" }.to_owned(),
            "deflate",
            self.deflate,
        );
    }
}

pub(crate) fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    keep_freed_memory();
    let threads = match &cmd {
        BenchCommand::Echo(a) => a.common.threads,
        BenchCommand::Fanout(a) => a.common.threads,
        BenchCommand::Hub(a) => a.common.threads,
        BenchCommand::Idle(a) => a.common.threads,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("starting the tokio runtime")?;
    match cmd {
        BenchCommand::Echo(args) => runtime.block_on(echo::run(args)),
        BenchCommand::Fanout(args) => runtime.block_on(fanout::run(args)),
        BenchCommand::Hub(args) => runtime.block_on(hub::run(args)),
        BenchCommand::Idle(args) => runtime.block_on(idle::run(args)),
    }
}

/// Stops glibc's allocator from handing freed memory back to the kernel at
/// once. By default it trims the heap whenever 128 KiB at its top are free and
/// grows it again, page fault by page fault, on the next allocations; with
/// messages of 16 KiB coming and going that churn (`brk`, page faults, page
/// clearing) took 6-10 % of the generator's CPU, enough to make the
/// generator, not the server, the limit. The generator is short-lived and
/// its peak heap small, so keeping what it frees costs nothing. (Raising
/// M_MMAP_THRESHOLD as well brought nothing measurable.)
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator tunable; it is called before
    // any thread of the generator starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Refuses any target but loopback (127.0.0.0/8, ::1, localhost): a load
/// generator must not be pointed at someone else's server by accident.
pub(crate) fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        .unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| h)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!("refusing to load-test {host:?}: only loopback targets are allowed");
    }
    Ok(())
}

/// Resident memory of process `pid` in bytes (VmRSS of /proc/PID/status).
pub(crate) fn process_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("unexpected VmRSS format")?;
    Ok(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::check_loopback;

    #[test]
    fn only_loopback_targets() {
        for ok in [
            "ws://127.0.0.1:9001/",
            "ws://127.8.9.1/x",
            "ws://localhost:80",
            "ws://[::1]:9000/",
            "http://127.0.0.1:8080",
        ] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ws://10.0.0.1:9001/",
            "ws://example.com/",
            "ws://[::2]:9000/",
            "ws://127.0.0.1@evil.example/",
            "http://192.168.1.1:8080",
            "nonsense",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }
}

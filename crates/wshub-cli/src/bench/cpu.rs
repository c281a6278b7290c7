//! What the server spent over a measured window: its CPU time from
//! /proc/PID/stat, split into user and kernel time, and, with
//! `--count-syscalls`, its send, receive and poll system calls, counted by
//! `perf stat` over the same window.
//!
//! The split is what tells a server's own code from the kernel's work. On
//! loopback the kernel's part of a message (a `send`, a `recv`, and the
//! receiving socket's TCP path, which runs on the sending core) is the same for
//! every server that makes the same calls; the syscall counts show whether it
//! does. Together they bound what any change to a server's own code can win.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::stats::Report;
use super::CommonArgs;

/// CPU time of a process, from /proc/PID/stat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuTimes {
    user: Duration,
    system: Duration,
}

impl CpuTimes {
    fn total(self) -> Duration {
        self.user + self.system
    }

    fn since(self, before: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }
}

/// User and system CPU time (all threads) of process `pid`.
fn process_cpu(pid: u32) -> anyhow::Result<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat(&stat).context("unexpected /proc stat format")
}

/// utime and stime are the 14th and 15th fields of the line, in clock ticks;
/// the command name before them is in parentheses and may hold spaces.
fn parse_stat(stat: &str) -> Option<CpuTimes> {
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    // CLK_TCK is 100 on every Linux this runs on.
    let user = Duration::from_millis(ticks()? * 10);
    let system = Duration::from_millis(ticks()? * 10);
    Some(CpuTimes { user, system })
}

/// The system calls counted with `--count-syscalls`: the ways a server on
/// tokio (mio), Node (libuv) or anything else sends, receives and waits.
/// `write` and `read` count on any descriptor, so a runtime with several
/// worker threads adds its wake-ups (eventfd writes and reads) to the sends
/// and receives; bench/compare.sh runs every server on one core, one worker.
const SEND_CALLS: [&str; 4] = ["sendto", "sendmsg", "write", "writev"];
const RECV_CALLS: [&str; 4] = ["recvfrom", "recvmsg", "read", "readv"];
const POLL_CALLS: [&str; 3] = ["epoll_wait", "epoll_pwait", "epoll_pwait2"];

/// `perf stat` counting the server's syscalls from `start` to `finish`.
///
/// perf starts with its counters off and is switched on and off through its
/// control pipe (`--control fd:0,1`: commands on its stdin, an `ack` for each
/// on its stdout), so the counts cover the probe's window exactly, however
/// long perf takes to start and attach.
struct SyscallCounter {
    perf: Child,
    control: ChildStdin,
    acks: ChildStdout,
}

impl SyscallCounter {
    fn start(pid: u32) -> anyhow::Result<SyscallCounter> {
        let events: Vec<String> = SEND_CALLS
            .iter()
            .chain(&RECV_CALLS)
            .chain(&POLL_CALLS)
            .map(|c| format!("syscalls:sys_enter_{c}"))
            .collect();
        let mut perf = Command::new("perf")
            .args(["stat", "-x", ",", "-D", "-1", "--control", "fd:0,1"])
            .args(["-p", &pid.to_string(), "-e", &events.join(",")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("--count-syscalls: starting `perf stat` (Debian: linux-perf)")?;
        let (Some(control), Some(acks)) = (perf.stdin.take(), perf.stdout.take()) else {
            let _ = perf.kill();
            bail!("--count-syscalls: no pipes to perf");
        };
        // If perf exits, reading its acks ends instead of blocking.
        let mut counter = SyscallCounter {
            perf,
            control,
            acks,
        };
        if let Err(e) = counter.command("enable") {
            let _ = counter.perf.kill();
            return Err(e.context(format!(
                "--count-syscalls: perf stat did not start counting: {}",
                counter.perf_output().trim()
            )));
        }
        Ok(counter)
    }

    /// Sends a control command and waits for its `ack`.
    fn command(&mut self, cmd: &str) -> anyhow::Result<()> {
        self.control
            .write_all(format!("{cmd}\n").as_bytes())
            .context("writing to perf's control pipe")?;
        // perf writes "ack\n" with the C string's NUL after it: a line, NULs
        // skipped.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 64 {
            self.acks
                .read_exact(&mut byte)
                .context("reading perf's acknowledgement")?;
            match byte[0] {
                0 => {}
                b'\n' => break,
                b => line.push(b),
            }
        }
        if line != b"ack" {
            bail!(
                "perf answered {:?} to {cmd}",
                String::from_utf8_lossy(&line)
            );
        }
        Ok(())
    }

    /// What perf printed (its counts, or why it failed), once it has exited.
    fn perf_output(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut err) = self.perf.stderr.take() {
            let _ = err.read_to_string(&mut out);
        }
        out
    }

    /// Switches counting off, stops perf (SIGINT makes it print its counts)
    /// and reads them.
    fn finish(mut self) -> anyhow::Result<Syscalls> {
        self.command("disable")?;
        let pid = libc::pid_t::try_from(self.perf.id()).context("perf's PID")?;
        // SAFETY: kill(2) on our own child, which has not been waited for, so
        // its PID cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let out = self.perf_output();
        let status = self.perf.wait().context("waiting for perf")?;
        parse_perf(&out).with_context(|| {
            format!(
                "--count-syscalls: perf stat ({status}) printed no counts for the \
                 syscall tracepoints (is tracefs mounted and perf_event_paranoid low \
                 enough?): {}",
                out.trim()
            )
        })
    }
}

impl Drop for SyscallCounter {
    fn drop(&mut self) {
        // A run that fails before `finish` must not leave perf behind.
        let _ = self.perf.kill();
        let _ = self.perf.wait();
    }
}

/// Syscalls over the window, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Syscalls {
    send: u64,
    recv: u64,
    poll: u64,
}

/// Reads `perf stat -x,` output: `COUNT,UNIT,EVENT,…` per line. Every event
/// asked for must have a count.
fn parse_perf(out: &str) -> Option<Syscalls> {
    let mut counts = Syscalls::default();
    let mut seen = 0;
    for line in out.lines() {
        let mut f = line.split(',');
        let (Some(count), Some(_unit), Some(event)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Some(call) = event.strip_prefix("syscalls:sys_enter_") else {
            continue;
        };
        // "<not counted>": no thread of the process ran in the window;
        // anything else that is not a number ("<not supported>") is an error.
        let n: u64 = match count.trim() {
            "<not counted>" => 0,
            c => c.parse().ok()?,
        };
        let slot = if SEND_CALLS.contains(&call) {
            &mut counts.send
        } else if RECV_CALLS.contains(&call) {
            &mut counts.recv
        } else if POLL_CALLS.contains(&call) {
            &mut counts.poll
        } else {
            continue;
        };
        *slot += n;
        seen += 1;
    }
    (seen == SEND_CALLS.len() + RECV_CALLS.len() + POLL_CALLS.len()).then_some(counts)
}

/// Server cost over a measured window: start it, then `finish` with the count
/// of messages to divide by. It also watches the generator's own CPU, to
/// tell whether the load generator rather than the server was the limit.
pub(crate) struct CpuProbe {
    pid: Option<u32>,
    before: Option<CpuTimes>,
    syscalls: Option<SyscallCounter>,
    started: Instant,
    own_before: Option<Duration>,
}

impl CpuProbe {
    pub(crate) fn start(common: &CommonArgs) -> anyhow::Result<CpuProbe> {
        let pid = common.server_pid;
        let syscalls = match (common.count_syscalls, pid) {
            (true, Some(pid)) => Some(SyscallCounter::start(pid)?),
            (true, None) => bail!("--count-syscalls needs --server-pid"),
            (false, _) => None,
        };
        let before = pid.map(process_cpu).transpose()?;
        Ok(CpuProbe {
            pid,
            before,
            syscalls,
            started: Instant::now(),
            own_before: process_cpu(std::process::id()).ok().map(CpuTimes::total),
        })
    }

    /// The generator's CPU use since `start`, in percent of one core (all of
    /// its threads together), if /proc could be read.
    pub(crate) fn generator_percent(&self) -> Option<f64> {
        let before = self.own_before?;
        let used = process_cpu(std::process::id())
            .ok()?
            .total()
            .saturating_sub(before);
        let wall = self.started.elapsed().as_secs_f64();
        (wall > 0.0).then(|| (used.as_secs_f64() * 1000.0 / wall).round() / 10.0)
    }

    /// The server's cost per message over the window (empty without a PID).
    pub(crate) fn finish(&mut self, messages: u64) -> anyhow::Result<ServerCost> {
        let syscalls = self
            .syscalls
            .take()
            .map(SyscallCounter::finish)
            .transpose()?;
        let (Some(pid), Some(before)) = (self.pid, self.before) else {
            return Ok(ServerCost::default());
        };
        let used = process_cpu(pid)?.since(before);
        Ok(ServerCost::new(used, syscalls, messages))
    }
}

/// The server's cost per message (or per delivery).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ServerCost {
    /// CPU time per message, µs.
    cpu_us: Option<f64>,
    /// Share of that time spent in the kernel, %.
    kernel_percent: Option<f64>,
    /// Send, receive and poll calls per message.
    calls: Option<[f64; 3]>,
}

impl ServerCost {
    fn new(used: CpuTimes, syscalls: Option<Syscalls>, messages: u64) -> ServerCost {
        let per = |n: f64| n / messages.max(1) as f64;
        let total = used.total().as_secs_f64();
        let calls = syscalls.map(|s| [s.send, s.recv, s.poll].map(|n| per(n as f64)));
        ServerCost {
            cpu_us: Some(per(total * 1e6)),
            kernel_percent: (total > 0.0).then(|| used.system.as_secs_f64() * 100.0 / total),
            calls,
        }
    }

    /// Adds the rows: CPU per `unit` (JSON `cpu_key`), its kernel share
    /// (`server_kernel_percent`) and, if counted, the syscalls per `unit`
    /// (`server_send_calls_per_msg`, `…recv…`, `…poll…`).
    pub(crate) fn report(&self, r: &mut Report, unit: &str, cpu_key: &str) {
        let round = |v: f64, scale: f64| (v * scale).round() / scale;
        r.row(
            &format!("server CPU per {unit}"),
            self.cpu_us.map_or("-".into(), |c| format!("{c:.3} µs")),
            cpu_key,
            self.cpu_us.map(|c| round(c, 1000.0)),
        );
        r.row(
            "server CPU in the kernel",
            self.kernel_percent
                .map_or("-".into(), |k| format!("{k:.1} %")),
            "server_kernel_percent",
            self.kernel_percent.map(|k| round(k, 10.0)),
        );
        if let Some(calls) = self.calls {
            for (kind, n) in ["send", "recv", "poll"].into_iter().zip(calls) {
                r.row(
                    &format!("server {kind} calls per {unit}"),
                    format!("{n:.3}"),
                    &format!("server_{kind}_calls_per_msg"),
                    round(n, 1000.0),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces_and_parens() {
        let line = "4242 (my (odd) server) S 1 4242 4242 0 -1 4194560 531 0 0 0 \
                    1234 56 0 0 20 0 2 0 100 0 0";
        let t = parse_stat(line).unwrap();
        assert_eq!(t.user, Duration::from_millis(12_340));
        assert_eq!(t.system, Duration::from_millis(560));
        assert!(parse_stat("4242 (short) S 1 2").is_none());
    }

    #[test]
    fn perf_counts_are_summed_by_kind_and_all_are_required() {
        let mut out = String::from("# started on Tue\n\n");
        for (i, c) in SEND_CALLS
            .iter()
            .chain(&RECV_CALLS)
            .chain(&POLL_CALLS)
            .enumerate()
        {
            out += &format!("{},,syscalls:sys_enter_{c},4000000000,100.00,,\n", i + 1);
        }
        let s = parse_perf(&out).unwrap();
        assert_eq!(s.send, 1 + 2 + 3 + 4);
        assert_eq!(s.recv, 5 + 6 + 7 + 8);
        assert_eq!(s.poll, 9 + 10 + 11);
        let idle = parse_perf(&out.replace("7,,", "<not counted>,,")).unwrap();
        assert_eq!(idle.recv, 5 + 6 + 8);
        let missing = out.replace("syscalls:sys_enter_readv", "cycles");
        assert!(parse_perf(&missing).is_none());
        let unsupported = out.replace("7,,", "<not supported>,,");
        assert!(parse_perf(&unsupported).is_none());
    }

    #[test]
    fn cost_per_message_and_kernel_share() {
        let used = CpuTimes {
            user: Duration::from_millis(250),
            system: Duration::from_millis(750),
        };
        let calls = Syscalls {
            send: 1000,
            recv: 500,
            poll: 10,
        };
        let c = ServerCost::new(used, Some(calls), 1000);
        assert_eq!(c.cpu_us, Some(1000.0));
        assert_eq!(c.kernel_percent, Some(75.0));
        let calls = c.calls.unwrap();
        for (got, want) in calls.into_iter().zip([1.0, 0.5, 0.01]) {
            assert!((got - want).abs() < 1e-9, "{calls:?}");
        }
        let idle = ServerCost::new(CpuTimes::default(), None, 0);
        assert_eq!(idle.kernel_percent, None);
        assert_eq!(idle.calls, None);
    }
}

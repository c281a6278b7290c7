//! The connection driver: one tokio task per connection that moves bytes between
//! the socket and the sans-IO [`Connection`], runs its timers, and runs the
//! application's handler future in the same task.
//!
//! Each turn: poll the handler if it asked to be (see [`Gate`]) → take queued
//! commands and messages from the shared state → write everything encoded with
//! one vectored write → read into a per-thread scratch buffer (nothing is kept
//! per connection between reads but an unfinished frame header) → hand events
//! to the application → arm the next timer. Like quinn's `ConnectionDriver`,
//! all I/O of a connection happens here and nowhere else.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;
use wshub_proto::connection::{Connection, Event, State, Timeout};
use wshub_proto::queue::Queue;
use wshub_proto::{CloseCode, CloseFrame};

use crate::socket::{Disconnect, Gate, Outbound, Shared};

/// Size of the per-thread read buffer.
const SCRATCH_SIZE: usize = 64 * 1024;

/// Encoded output above which the driver stops pulling more messages from the
/// shared queue, so that the backlog stays as whole messages (which the
/// drop-oldest policy can drop) rather than encoded bytes.
const HIGH_WATER: usize = 256 * 1024;

/// Rounds a driver makes in one poll for wakes that come while it polls,
/// before it lets the scheduler run the other tasks first.
const MAX_ROUNDS: u32 = 4;

/// Most slices handed to one vectored write (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// A boxed handler future.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a driver needs besides its socket.
pub(crate) struct DriverParts {
    pub(crate) conn: Connection,
    pub(crate) shared: Arc<Shared>,
    pub(crate) handler: Option<HandlerFuture>,
    pub(crate) write_stall_timeout: Duration,
    pub(crate) close_timeout: Duration,
    /// Bytes received after the handshake, in the same read as its end.
    pub(crate) leftover: Vec<u8>,
}

pub(crate) struct Driver<S> {
    io: S,
    conn: Connection,
    shared: Arc<Shared>,
    handler: Option<HandlerFuture>,
    sleep: Pin<Box<Sleep>>,
    sleep_at: Option<Instant>,
    stall_since: Option<Instant>,
    needs_flush: bool,
    read_paused: bool,
    /// The application's inbound queue was full when `pull` last looked.
    inbound_full: bool,
    write_stall_timeout: Duration,
    close_timeout: Duration,
    /// How the connection is ending, once it is: boxed, since only a closing
    /// connection needs it and every idle one would carry it.
    ending: Option<Box<Ending>>,
}

/// What the driver learns while a connection ends, for its disconnect reason.
#[derive(Default)]
struct Ending {
    /// The close frame this side sent.
    local_close: Option<CloseFrame>,
    /// The peer's close frame (`Some(None)`: one without a body).
    peer_close: Option<Option<CloseFrame>>,
    failure: Option<Disconnect>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(io: S, parts: DriverParts) -> Self {
        let mut d = Driver {
            io,
            conn: parts.conn,
            shared: parts.shared,
            handler: parts.handler,
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            sleep_at: None,
            stall_since: None,
            needs_flush: false,
            read_paused: false,
            inbound_full: false,
            write_stall_timeout: parts.write_stall_timeout,
            close_timeout: parts.close_timeout,
            ending: None,
        };
        let mut leftover = parts.leftover;
        if !leftover.is_empty() {
            if let Err(e) = d.conn.handle_input(now(), &mut leftover) {
                d.ending.get_or_insert_with(Box::default).failure = Some(Disconnect::Protocol(e));
            }
            // Nobody waits yet: the handler has not been polled.
            drop(d.dispatch_events());
        }
        d
    }

    /// Runs the connection to its end, lets the handler finish, and calls
    /// `on_end` (which can own what must live as long as the connection).
    /// The reason it ended is in the shared state ([`Shared::ended_reason`]).
    ///
    /// An `async` block rather than an `async fn`: an `async fn` keeps its
    /// by-value `self` twice in its state (rust-lang/rust#62958), which every
    /// idle connection would pay for. For the same reason nothing but the
    /// driver itself is kept across an await (the reason is in the shared
    /// state, the handler is polled in place).
    #[allow(clippy::manual_async_fn)] // an async block on purpose (rust-lang/rust#62958)
    pub(crate) fn run(self, on_end: impl FnOnce() + Send) -> impl Future<Output = ()> {
        let mut this = self;
        async move {
            let reason = poll_fn(|cx| this.poll_open(cx)).await;
            let graceful = matches!(
                reason,
                Disconnect::Closed { .. } | Disconnect::Protocol(_) | Disconnect::SlowConsumer
            );
            this.finish(reason);
            if graceful {
                // Boxed: the closing states (a timer, the writes, a read
                // buffer) would otherwise be part of every connection's task
                // for its whole life, idle or not.
                Box::pin(this.close_gracefully()).await;
            }
            drop(this.io);
            let handler = &mut this.handler;
            poll_fn(|cx| match handler {
                Some(h) => h.as_mut().poll(cx),
                None => Poll::Ready(()),
            })
            .await;
            on_end();
        }
    }

    /// Writes what is left (the close frame), closes our side, and waits for
    /// the peer to close its side, so the kernel does not answer unread data
    /// with a reset that could destroy the close frame in flight.
    async fn close_gracefully(&mut self) {
        let io = &mut self.io;
        let conn = &mut self.conn;
        let _ = tokio::time::timeout(self.close_timeout, async move {
            flush_all(io, conn).await?;
            io.shutdown().await?;
            let mut sink = [0u8; 4096];
            while io.read(&mut sink).await? != 0 {}
            io::Result::Ok(())
        })
        .await;
    }

    fn take_failure(&mut self) -> Option<Disconnect> {
        self.ending.as_mut().and_then(|e| e.failure.take())
    }

    /// Marks the connection ended for the application.
    fn finish(&mut self, reason: Disconnect) {
        self.shared.mark_ended(reason);
    }

    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Disconnect> {
        // See `Gate`: while the driver polls, wakes for its handler and for
        // queued sends only set bits, which are looked at before it returns.
        self.shared.gate.enter();
        let mut handler_yielded = false;
        let mut rounds = 1;
        loop {
            let polled = self.poll_turns(cx, &mut handler_yielded);
            let late = self.shared.gate.leave();
            if polled.is_ready() || late == 0 {
                return polled;
            }
            if handler_yielded || rounds == MAX_ROUNDS {
                break;
            }
            // Woken after its last look: another round instead of another
            // trip through the scheduler.
            rounds += 1;
            self.shared.gate.enter();
        }
        // A handler that woke itself while it was polled (a future that
        // yields by waking its task at once; tokio's own yields defer the
        // wake until the poll is over), or wakes that keep coming: let the
        // other tasks run first. The bits stay set, so the next poll acts on
        // them.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_turns(&mut self, cx: &mut Context<'_>, handler_yielded: &mut bool) -> Poll<Disconnect> {
        loop {
            // The handler runs first in each turn, so a message read in the
            // previous turn is answered and written without another task
            // wake-up; it runs only when its waker was woken (see `Gate`).
            let now = now();
            if !*handler_yielded && self.shared.gate.take(Gate::HANDLER) {
                self.poll_handler(now);
                *handler_yielded = self.shared.gate.is_set(Gate::HANDLER);
            }
            if let Some(reason) = self.pull(cx, now) {
                return Poll::Ready(reason);
            }
            if self.conn.deferred_failure().is_some() {
                // A protocol error was read in the previous turn (reading comes
                // after this point): the handler has seen the messages that came
                // before the bad frame and its answers were pulled above, so the
                // close frame now goes out after them.
                self.conn.commit_failure(now);
            }
            let mut progress = match self.poll_write(cx, now) {
                Ok(p) => p,
                Err(e) => return Poll::Ready(Disconnect::Io(e.to_string())),
            };
            if self.conn.state() == State::Closed {
                if !self.conn.has_output() && !self.needs_flush {
                    return Poll::Ready(self.closed_reason());
                }
            } else if self.may_read(now) {
                match self.poll_read(cx, now) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) => {
                        return Poll::Ready(self.take_failure().unwrap_or(Disconnect::Abnormal))
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Disconnect::Io(e.to_string())),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return self.poll_timers(cx, now);
            }
        }
    }

    /// Polls the handler with the gate's waker (see `Gate`).
    fn poll_handler(&mut self, now: Instant) {
        let Some(h) = self.handler.as_mut() else {
            return;
        };
        let waker = Waker::from(Arc::clone(&self.shared.handler_waker));
        let mut hcx = Context::from_waker(&waker);
        // A panicking handler must not take the connection down with the
        // task without a close frame and a registry entry left behind.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.as_mut().poll(&mut hcx)));
        match polled {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(())) => self.handler = None,
            Err(_) => {
                self.handler = None;
                tracing::error!(id = self.shared.id, "connection handler panicked");
                self.ending.get_or_insert_with(Box::default).failure =
                    Some(Disconnect::HandlerPanicked);
                let _ = self
                    .conn
                    .close(now, CloseCode::INTERNAL_ERROR, "internal error");
            }
        }
    }

    /// Takes commands and queued messages from the shared state.
    fn pull(&mut self, cx: &mut Context<'_>, now: Instant) -> Option<Disconnect> {
        // Before the lock: a send after this point sets the bit again.
        self.shared.gate.take(Gate::POKED);
        let mut inner = self.shared.lock();
        match &inner.driver {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.driver = Some(cx.waker().clone()),
        }
        if inner.terminate {
            return Some(Disconnect::Terminated);
        }
        if inner.slow && self.ending.as_ref().is_none_or(|e| e.failure.is_none()) {
            inner.out.clear();
            inner.out_bytes = 0;
            self.ending.get_or_insert_with(Box::default).failure = Some(Disconnect::SlowConsumer);
            let code = crate::close_codes::SLOW_CONSUMER;
            let reason = "slow consumer: outbound queue full";
            if self.conn.close(now, code, reason).is_ok() {
                self.ending.get_or_insert_with(Box::default).local_close =
                    Some(CloseFrame::new(code, reason));
            }
        }
        // Encode ahead at most a quarter of the queue limit, so most of a backlog
        // stays as whole messages the drop-oldest policy can still drop.
        let high_water = HIGH_WATER.min(self.shared.max_queue_bytes / 4).max(1);
        while self.conn.output_len() < high_water {
            let Some(item) = inner.out.pop_front() else {
                break;
            };
            let res = match item {
                Outbound::Message(m) => {
                    inner.out_bytes -= m.len();
                    self.conn.send(m)
                }
                Outbound::Prepared(p) => {
                    inner.out_bytes -= p.message().len();
                    self.conn.send_prepared(&p)
                }
                Outbound::Ping(b) => {
                    inner.out_bytes -= b.len();
                    self.conn.ping(&b)
                }
                Outbound::Close(code, reason) => {
                    inner.out_bytes -= reason.len() + 2;
                    let r = self.conn.close(now, code, &reason);
                    let ending = self.ending.get_or_insert_with(Box::default);
                    if r.is_ok() && ending.local_close.is_none() {
                        ending.local_close = Some(CloseFrame::new(code, &reason));
                    }
                    r
                }
            };
            // Sends racing with the close handshake are dropped: the application
            // learns of the end from `recv`/`closed`.
            if let Err(e) = res {
                tracing::trace!(id = self.shared.id, error = %e, "queued item dropped");
            }
        }
        if inner.handles == 0 && self.handler.is_none() && self.conn.state() == State::Open {
            // Nobody can send or receive on this connection any more.
            if self.conn.close(now, CloseCode::NORMAL, "").is_ok() {
                self.ending.get_or_insert_with(Box::default).local_close =
                    Some(CloseFrame::new(CloseCode::NORMAL, ""));
            }
        }
        inner.wire_bytes = self.conn.output_len();
        // Snapshot for `may_read` later in this turn, under the same lock. Only
        // this task adds to the inbound queue, and a reader that drains it wakes
        // the driver through the waker registered above, so it cannot go stale
        // unnoticed.
        self.inbound_full =
            inner.inbound_bytes >= self.shared.max_inbound_bytes && !inner.inbound.is_empty();
        None
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, now: Instant) -> io::Result<bool> {
        let mut progress = false;
        while self.conn.has_output() {
            match poll_write_chunks(&mut self.io, cx, &self.conn) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(written)) => {
                    self.conn.advance_output(written);
                    self.stall_since = None;
                    self.needs_flush = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.stall_since.get_or_insert(now);
                    break;
                }
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.stall_since.get_or_insert(now);
                }
            }
        }
        Ok(progress)
    }

    /// Reading pauses while the application has a full inbound queue. The
    /// heartbeat pauses with it: the peer's pongs cannot be seen while we do not
    /// read, and the stall is the application's, not the peer's.
    fn may_read(&mut self, now: Instant) -> bool {
        let ok = !self.inbound_full;
        if ok == self.read_paused {
            self.read_paused = !ok;
            if ok {
                self.conn.resume_heartbeat(now);
            } else {
                self.conn.suspend_heartbeat();
            }
        }
        ok
    }

    /// Reads once into the thread's scratch buffer and feeds the connection.
    /// `Ok(false)` is end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>, now: Instant) -> Poll<io::Result<bool>> {
        let io = &mut self.io;
        let conn = &mut self.conn;
        let mut read = |buf: &mut [u8]| -> Poll<io::Result<Option<Result<(), _>>>> {
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Ok(Some(conn.handle_input(now, rb.filled_mut()))))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        };
        let polled = SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => read(&mut scratch),
            // Only reachable if a driver were polled from inside another's read.
            Err(_) => read(&mut vec![0u8; 4096]),
        });
        match polled {
            Poll::Ready(Ok(Some(res))) => {
                if let Err(e) = res {
                    self.ending.get_or_insert_with(Box::default).failure =
                        Some(Disconnect::Protocol(e));
                }
                // The handler's waker only sets the gate's bit (it is polled
                // again in this poll, see `Gate`); readers in other tasks are
                // woken.
                for w in self.dispatch_events() {
                    w.wake();
                }
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(false)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Hands decoded events to the application; returns the wakers of readers
    /// that now have a message.
    #[must_use]
    fn dispatch_events(&mut self) -> Queue<std::task::Waker> {
        let mut wake = Queue::new();
        let mut inner = None;
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Message(m) => {
                    let inner = inner.get_or_insert_with(|| self.shared.lock());
                    if inner.handles == 0 && self.handler.is_none() {
                        // Nobody will ever read it.
                        continue;
                    }
                    inner.inbound_bytes += m.len();
                    inner.inbound.push_back(m);
                    if wake.is_empty() {
                        wake = std::mem::take(&mut inner.readers);
                    }
                }
                Event::Close(frame) => {
                    self.ending.get_or_insert_with(Box::default).peer_close = Some(frame)
                }
                Event::Ping(_) | Event::Pong(_) => {}
            }
        }
        drop(inner);
        wake
    }

    fn closed_reason(&mut self) -> Disconnect {
        let Some(ending) = self.ending.as_mut() else {
            return Disconnect::Abnormal;
        };
        if let Some(f) = ending.failure.take() {
            return f;
        }
        match (&ending.local_close, ending.peer_close.take()) {
            (Some(local), _) => Disconnect::Closed {
                code: local.code,
                reason: local.reason.clone(),
                by_peer: false,
            },
            (None, Some(peer)) => {
                let (code, reason) = match peer {
                    Some(f) => (f.code, f.reason),
                    None => (CloseCode::NO_STATUS, String::new()),
                };
                Disconnect::Closed {
                    code,
                    reason,
                    by_peer: true,
                }
            }
            (None, None) => Disconnect::Abnormal,
        }
    }

    /// Arms the timer for the connection's next deadline and handles the ones
    /// that are due. `turn_start` is the time the driver's last turn began.
    fn poll_timers(&mut self, cx: &mut Context<'_>, turn_start: Instant) -> Poll<Disconnect> {
        loop {
            let stall_deadline = self.stall_since.map(|t| t + self.write_stall_timeout);
            let deadline = match (self.conn.poll_timeout(), stall_deadline) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(d) => d,
                    None => return Poll::Pending,
                },
            };
            if self.sleep_at != Some(deadline) {
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(deadline));
                self.sleep_at = Some(deadline);
            } else if turn_start < deadline {
                // Armed and polled at this deadline already (a reset is always
                // followed by a poll), and not due: the timer holds this task's
                // waker and wakes it when it fires. Polling it again on every
                // turn was over 1 % of the CPU of a hub fanning out to 5,000
                // connections. A timer that fires during this turn finds the
                // task running and has it polled again, with a later start.
                return Poll::Pending;
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep_at = None;
            let now = now();
            if stall_deadline.is_some_and(|d| d <= now) {
                return Poll::Ready(Disconnect::WriteStalled);
            }
            match self.conn.handle_timeout(now) {
                Err(Timeout::Pong) => return Poll::Ready(Disconnect::PongTimeout),
                Err(_) => return Poll::Ready(Disconnect::CloseTimeout),
                Ok(()) => {
                    if self.conn.has_output() {
                        // A heartbeat ping was queued: the connection may be
                        // idle, so give back the room of its last burst.
                        let mut inner = self.shared.lock();
                        inner.out.release(0);
                        inner.inbound.release(0);
                        drop(inner);
                        // Go round again to write the ping.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Writes the connection's queued chunks: one chunk with a plain write, more
/// with one vectored write. On a Linux socket the plain write is `send`,
/// the vectored one `writev`, which also passes through the file layer (the
/// file-position lock, the iovec import): 4 to 7 % of the server's CPU when
/// each message goes out on its own, as in echo or a fan-out at a low rate.
fn poll_write_chunks<S: AsyncWrite + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    conn: &Connection,
) -> Poll<io::Result<usize>> {
    let mut iov = [IoSlice::new(&[]); MAX_IOV];
    match conn.chunks_vectored(&mut iov) {
        1 => Pin::new(io).poll_write(cx, &iov[0]),
        n => Pin::new(io).poll_write_vectored(cx, &iov[..n]),
    }
}

async fn flush_all<S: AsyncWrite + Unpin>(io: &mut S, conn: &mut Connection) -> io::Result<()> {
    while conn.has_output() {
        let written = poll_fn(|cx| poll_write_chunks(io, cx, conn)).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        conn.advance_output(written);
    }
    io.flush().await
}

#!/usr/bin/env python3
"""Drive each wshub example (crates/wshub/examples/*.rs) with independent clients.

    examples_test.py [--bin-dir DIR] [--timeout SECS] [EXAMPLE ...]

Each example binary (DIR/NAME, default target/release/examples) is started on
127.0.0.1:0; the real address is read from its `listening on ADDR` line. The
clients are Python `websockets` (asyncio API), a small raw-socket WebSocket
client (for what a library hides: frames as they arrive, a peer that never
answers pings) and urllib for plain HTTP. Each server is stopped with SIGTERM
(SIGKILL after 5 s) when its checks end, and must exit 0.

Prints `ok  EXAMPLE CHECK` per check; on the first failure prints
`FAIL EXAMPLE CHECK: why`, the tails of the server's stdout and stderr, and
exits 1 (2 on bad usage). Every wait is bounded: --timeout seconds per network
step (default 10), 6x that for the 16 MiB messages, 300x for the whole run.
Only loopback is contacted; proxy settings are ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime
import hashlib
import ipaddress
import os
import re
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.protocol import State

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
ALL = ["simple", "echo", "express", "heartbeat", "broadcast", "wss"]

STEP = 10.0  # seconds per network step; set from --timeout


class CheckFailed(Exception):
    pass


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise CheckFailed(why)


def describe(data: object) -> str:
    if isinstance(data, str):
        return f"text {len(data.encode())} bytes" + (f" {data!r}" if len(data) <= 80 else "")
    if isinstance(data, (bytes, bytearray)):
        return f"binary {len(data)} bytes" + (f" {bytes(data)!r}" if len(data) <= 40 else "")
    return repr(data)


async def bounded(aw, timeout: float, what: str):
    """Await `aw` for at most `timeout` seconds; a timeout is a check failure."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise CheckFailed(f"timed out after {timeout:g}s waiting for {what}") from None


# --- the server under test ------------------------------------------------------------


class Server:
    """One example binary as a subprocess, its stdout lines kept for the checks."""

    def __init__(self, name: str, bin_dir: Path, args: list[str]) -> None:
        self.name = name
        self.path = bin_dir / name
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.out: list[str] = []
        self.err: collections.deque[str] = collections.deque(maxlen=400)
        self.changed = asyncio.Condition()
        self.readers: list[asyncio.Task] = []
        self.addr = ""
        self.port = 0
        self.term_sent_at: float | None = None

    async def start(self) -> None:
        expect(self.path.is_file() and os.access(self.path, os.X_OK),
               f"no example binary at {self.path} (cargo build --release -p wshub --examples)")
        self.proc = await asyncio.create_subprocess_exec(
            str(self.path), "127.0.0.1:0", *self.args,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        LIVE.add(self.proc.pid)
        self.readers = [
            asyncio.create_task(self._pump(self.proc.stdout, self.out.append)),
            asyncio.create_task(self._pump(self.proc.stderr, self.err.append)),
        ]
        line = await self.wait_line(lambda l: l.startswith("listening on "), 0, 6 * STEP,
                                    "`listening on ADDR` on stdout")
        m = re.fullmatch(r"listening on (127\.0\.0\.1):(\d+)", line)
        expect(m is not None, f"could not parse the address from {line!r}")
        self.addr = f"{m.group(1)}:{m.group(2)}"
        self.port = int(m.group(2))

    async def _pump(self, stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                break
            sink(raw.decode(errors="replace").rstrip("\r\n"))
            async with self.changed:
                self.changed.notify_all()
        async with self.changed:
            self.changed.notify_all()

    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    async def wait_line(self, pred: Callable[[str], bool], start: int, timeout: float,
                        what: str) -> str:
        """The first stdout line at index >= start matching pred, waiting for it."""
        found: list[str] = []

        def check() -> bool:
            for l in self.out[start:]:
                if pred(l):
                    found.append(l)
                    return True
            # stdout closed: the process is gone or going, nothing more will come
            return self.readers[0].done()

        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(check), timeout)
            except asyncio.TimeoutError:
                pass
        if found:
            return found[0]
        if self.readers[0].done():
            rc = self.proc.returncode if self.proc else None
            raise CheckFailed(f"server closed its stdout (exit status {rc}) before printing {what}")
        raise CheckFailed(f"server printed no {what} within {timeout:g}s")

    def mark(self) -> int:
        return len(self.out)

    def terminate(self) -> None:
        """Send SIGTERM. (Not proc.send_signal: Popen.send_signal polls, which can
        reap the child under asyncio's child watcher, whose status is then lost.)"""
        self.term_sent_at = time.monotonic()
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def stop(self) -> tuple[int | None, float, bool]:
        """SIGTERM, then SIGKILL after 5 s. Returns (exit status, seconds, killed)."""
        proc = self.proc
        if proc is None:
            return None, 0.0, False
        if self.term_sent_at is None:
            self.terminate()
        t0 = self.term_sent_at
        killed = False
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                killed = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except asyncio.TimeoutError:
                    pass
        LIVE.discard(proc.pid)
        # let the pumps drain what the process wrote last
        try:
            await asyncio.wait_for(asyncio.gather(*self.readers), 2)
        except asyncio.TimeoutError:
            for r in self.readers:
                r.cancel()
        return proc.returncode, time.monotonic() - t0, killed

    def tails(self, n: int = 30) -> str:
        out = "\n".join(self.out[-n:]) or "(nothing)"
        err = "\n".join(list(self.err)[-n:]) or "(nothing)"
        return (f"--- {self.name} stdout (last {n} lines) ---\n{out}\n"
                f"--- {self.name} stderr (last {n} lines) ---\n{err}")


LIVE: set[int] = set()  # pids of servers still running, killed on any way out


def kill_leftovers() -> None:
    for pid in list(LIVE):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        LIVE.discard(pid)


# --- a raw-socket WebSocket client (RFC 6455, client side) ----------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RawClient:
    """Handshake by hand, then frames as they arrive; masks what it sends."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, host: str, port: int) -> None:
        self.reader, self.writer = await bounded(asyncio.open_connection(host, port), STEP,
                                                 "the TCP connection")
        key = base64.b64encode(os.urandom(16))
        self.writer.write(
            b"GET / HTTP/1.1\r\n"
            + f"Host: {host}:{port}\r\n".encode()
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            + b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await bounded(self.writer.drain(), STEP, "the handshake request to be written")
        head = await bounded(self.reader.readuntil(b"\r\n\r\n"), STEP, "the handshake response")
        lines = head.decode("latin-1").split("\r\n")
        expect(lines[0].startswith("HTTP/1.1 101"), f"handshake answered {lines[0]!r}, not 101")
        headers = {}
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        expect(headers.get("sec-websocket-accept") == want,
               f"Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}, expected {want!r}")

    async def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame, or None at EOF / reset."""
        try:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            if b1 & 0x80:
                raise CheckFailed("the server sent a masked frame")
            return b0 & 0x0F, await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


# --- websockets helpers ---------------------------------------------------------------


class PingCountingConnection(ClientConnection):
    """A websockets client connection that counts the pings it receives (it still
    answers them itself, as every websockets connection does)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pings_received: list[float] = []

    def process_event(self, event) -> None:
        if self.response is not None and getattr(event, "opcode", None) is Opcode.PING:
            self.pings_received.append(time.monotonic())
        super().process_event(event)


def ws_connect(url: str, **kwargs):
    opts = dict(max_size=64 * MIB, open_timeout=STEP, close_timeout=STEP,
                ping_interval=None, proxy=None)
    opts.update(kwargs)
    return connect(url, **opts)


async def recv(ws: ClientConnection, what: str, timeout: float | None = None):
    try:
        return await bounded(ws.recv(), timeout or STEP, what)
    except ConnectionClosed as e:
        raise CheckFailed(f"connection closed ({e}) while waiting for {what}") from None


async def expect_message(ws: ClientConnection, want: str | bytes, who: str) -> None:
    got = await recv(ws, f"{describe(want)} at {who}")
    expect(type(got) is type(want) and got == want,
           f"{who} expected {describe(want)}, got {describe(got)}")


async def expect_quiet(ws: ClientConnection, who: str, window: float) -> None:
    """Nothing more arrives at `ws` within `window` seconds (a bounded absence check)."""
    try:
        got = await asyncio.wait_for(ws.recv(), window)
    except asyncio.TimeoutError:
        return
    except ConnectionClosed as e:
        raise CheckFailed(f"{who}'s connection closed ({e})") from None
    raise CheckFailed(f"{who} got an unexpected extra message: {describe(got)}")


async def ping_barrier(ws: ClientConnection, who: str) -> None:
    """A pong from the server proves its connection driver is running."""
    waiter = await bounded(ws.ping(), STEP, f"{who}'s ping to be sent")
    await bounded(waiter, STEP, f"the pong to {who}'s ping")


# --- the checks -------------------------------------------------------------------------


class Run:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.count = 0
        self.example = ""
        self.check = "start"
        self.server: Server | None = None

    def begin(self, check: str) -> None:
        self.check = check

    def ok(self, check: str, detail: str = "") -> None:
        self.count += 1
        print(f"ok  {self.example} {check}" + (f" ({detail})" if detail else ""), flush=True)

    async def with_server(self, name: str, args: list[str], body) -> None:
        self.example = name
        self.begin("start")
        self.server = Server(name, self.bin_dir, args)
        # on a failure main() stops the server and prints its output's tails
        await self.server.start()
        self.ok("start", f"listening on {self.server.addr}")
        await body(self.server)
        self.begin("stops on SIGTERM")
        rc, secs, killed = await self.server.stop()
        expect(not killed, f"still running {secs:.1f}s after SIGTERM; killed")
        expect(rc == 0, f"exit status {rc} after SIGTERM, expected 0")
        self.ok("stops on SIGTERM", f"exit 0 in {secs:.2f}s")
        self.server = None

    # simple ---------------------------------------------------------------------------

    async def simple(self, srv: Server) -> None:
        url = f"ws://{srv.addr}/"
        async with ws_connect(url) as ws:
            self.begin("sends `something` on connect")
            await expect_message(ws, "something", "the new client")
            self.ok("sends `something` on connect")

            self.begin("logs `received: <text>`")
            for text in ("hello from python", "héllo wörld 日本語 🎉 " + os.urandom(4).hex()):
                mark = srv.mark()
                await bounded(ws.send(text), STEP, "the message to be sent")
                await srv.wait_line(lambda l, t=text: l == f"received: {t}", mark, STEP,
                                    f"`received: {text}`")
            self.ok("logs `received: <text>`", "ASCII and multi-byte UTF-8")

    # echo ------------------------------------------------------------------------------

    async def echo(self, srv: Server) -> None:
        url = f"ws://{srv.addr}/"
        big_step = 6 * STEP

        self.begin("permessage-deflate negotiated when offered")
        async with ws_connect(url, compression=None) as plain:
            ext_off = plain.response.headers.get("Sec-WebSocket-Extensions")
            expect(ext_off is None or "permessage-deflate" not in ext_off,
                   f"not offered, but the response has Sec-WebSocket-Extensions: {ext_off!r}")
            async with ws_connect(url, compression="deflate") as ws:
                ext = ws.response.headers.get("Sec-WebSocket-Extensions")
                expect(ext is not None and "permessage-deflate" in ext,
                       f"offered permessage-deflate; response Sec-WebSocket-Extensions: {ext!r}")
                self.ok("permessage-deflate negotiated when offered",
                        f"{ext}; absent when not offered")

                for label, conn in (("deflate", ws), ("no deflate", plain)):
                    self.begin(f"text and binary echoed with their type [{label}]")
                    for msg in ("héllo wörld — Жизнь, 日本語, 🎉 𝄞", "",
                                bytes(range(256)) * 4, b""):
                        await bounded(conn.send(msg), STEP, "the message to be sent")
                        got = await recv(conn, f"the echo of {describe(msg)}")
                        expect(type(got) is type(msg), f"sent {describe(msg)}, got {describe(got)}")
                        expect(got == msg, f"sent {describe(msg)}, got different content: {describe(got)}")
                    self.ok(f"text and binary echoed with their type [{label}]")

                for label, conn in (("deflate", ws), ("no deflate", plain)):
                    self.begin(f"16 MiB binary round trip [{label}]")
                    big = os.urandom(16 * MIB)
                    t0 = time.monotonic()
                    await bounded(conn.send(big), big_step, "16 MiB to be sent")
                    got = await recv(conn, "the 16 MiB echo", big_step)
                    expect(type(got) is bytes, f"sent binary 16 MiB, got {describe(got)}")
                    expect(got == big, f"sent 16 MiB, got {len(got)} bytes with different content")
                    self.ok(f"16 MiB binary round trip [{label}]", f"{time.monotonic() - t0:.2f}s")

            self.begin("closes clients with 1001 on SIGTERM")
            srv.terminate()
            try:
                await bounded(plain.wait_closed(), STEP, "the connection to close after SIGTERM")
            except ConnectionClosed:
                pass
            rcvd = plain.protocol.close_rcvd
            expect(rcvd is not None, "the server dropped TCP without a close frame on SIGTERM")
            expect(rcvd.code == 1001, f"close code {rcvd.code} {rcvd.reason!r} on SIGTERM, expected 1001")
            self.ok("closes clients with 1001 on SIGTERM", f"reason {rcvd.reason!r}")

    # express ---------------------------------------------------------------------------

    async def express(self, srv: Server) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def get(path: str) -> tuple[int, str, bytes]:
            try:
                with opener.open(f"http://{srv.addr}{path}", timeout=STEP) as r:
                    return r.status, r.headers.get("Content-Type", ""), r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers.get("Content-Type", ""), e.read()

        for path in ("/", "/anything", "/some/deep/path?q=1"):
            self.begin(f"GET {path} -> 200 {{\"msg\":\"hello\"}}")
            status, ctype, body = await bounded(asyncio.to_thread(get, path), STEP + 1,
                                                f"the HTTP response to GET {path}")
            expect(status == 200, f"GET {path}: status {status}, expected 200 (body {body[:200]!r})")
            expect(ctype.split(";")[0].strip().lower() == "application/json",
                   f"GET {path}: Content-Type {ctype!r}, expected application/json")
            expect(body == b'{"msg":"hello"}', f"GET {path}: body {body[:200]!r}, expected b'{{\"msg\":\"hello\"}}'")
            self.ok(f"GET {path} -> 200 {{\"msg\":\"hello\"}}", f"Content-Type: {ctype}")

        url = f"ws://{srv.addr}/"
        mark = srv.mark()
        async with ws_connect(url) as ws:
            self.begin("websocket client gets `something`")
            await expect_message(ws, "something", "the WebSocket client")
            self.ok("websocket client gets `something`")

            self.begin("logs `websocket client ip: 127.0.0.1`")
            line = await srv.wait_line(lambda l: l.startswith("websocket client ip:"), mark, STEP,
                                       "`websocket client ip: ...`")
            expect(line == "websocket client ip: 127.0.0.1", f"logged {line!r}, expected "
                   "'websocket client ip: 127.0.0.1'")
            self.ok("logs `websocket client ip: 127.0.0.1`")

            self.begin("logs `received: <text>`")
            text = "hello express " + os.urandom(4).hex()
            mark = srv.mark()
            await bounded(ws.send(text), STEP, "the message to be sent")
            await srv.wait_line(lambda l: l == f"received: {text}", mark, STEP, f"`received: {text}`")
            self.ok("logs `received: <text>`")

        self.begin("X-Forwarded-For from a trusted proxy is the client ip")
        mark = srv.mark()
        async with ws_connect(url, additional_headers={"X-Forwarded-For": "203.0.113.9"}) as ws:
            await expect_message(ws, "something", "the proxied WebSocket client")
            line = await srv.wait_line(lambda l: l.startswith("websocket client ip:"), mark, STEP,
                                       "`websocket client ip: ...`")
            expect(line == "websocket client ip: 203.0.113.9",
                   f"with X-Forwarded-For: 203.0.113.9 from 127.0.0.1, logged {line!r}, "
                   "expected 'websocket client ip: 203.0.113.9'")
            text = "via proxy " + os.urandom(4).hex()
            mark = srv.mark()
            await bounded(ws.send(text), STEP, "the message to be sent")
            await srv.wait_line(lambda l: l == f"received: {text}", mark, STEP, f"`received: {text}`")
        self.ok("X-Forwarded-For from a trusted proxy is the client ip",
                "logged 203.0.113.9; its messages logged too")

    # heartbeat -------------------------------------------------------------------------

    async def heartbeat(self, srv: Server, interval: float) -> None:
        url = f"ws://{srv.addr}/"

        async def client_id(mark: int, who: str) -> str:
            line = await srv.wait_line(lambda l: re.fullmatch(r"client \d+ connected from .*", l) is not None,
                                       mark, STEP, f"`client N connected from ...` for {who}")
            return line.split()[1]

        def gone_lines(cid: str) -> list[str]:
            return [l for l in srv.out if l.startswith(f"client {cid} gone")]

        # A: websockets, answers pings by itself; counts the pings it gets.
        mark = srv.mark()
        a_cm = ws_connect(url, create_connection=PingCountingConnection)
        a = await a_cm.__aenter__()
        try:
            t_a = time.monotonic()
            id_a = await client_id(mark, "the websockets client")

            # B: raw socket, answers each ping with a pong of the same payload.
            mark = srv.mark()
            b = RawClient()
            await b.connect("127.0.0.1", srv.port)
            id_b = await client_id(mark, "the answering raw client")
            b_pings: list[bytes] = []
            b_end: list[str] = []

            async def answer() -> None:
                while True:
                    f = await b.read_frame()
                    if f is None:
                        b_end.append("EOF")
                        return
                    op, payload = f
                    if op == 0x9:
                        b_pings.append(payload)
                        b.send_frame(0xA, payload)
                    elif op == 0x8:
                        b_end.append(f"close frame {payload[:2].hex()}")
                        return

            b_task = asyncio.create_task(answer())

            # C: raw socket that never answers: must be dropped.
            self.begin("a client that never answers pings is dropped")
            mark = srv.mark()
            c = RawClient()
            await c.connect("127.0.0.1", srv.port)
            t_c = time.monotonic()
            id_c = await client_id(mark, "the silent raw client")
            c_pings = 0
            how = ""
            limit = 10 * interval
            while True:
                left = t_c + limit - time.monotonic()
                try:
                    f = await asyncio.wait_for(c.read_frame(), max(left, 0.001))
                except asyncio.TimeoutError:
                    c.abort()
                    raise CheckFailed(f"the silent client was still connected {limit:g}s "
                                      f"({limit / interval:g} intervals) after connecting; "
                                      f"it got {c_pings} ping(s)") from None
                if f is None:
                    how = "TCP EOF"
                    break
                op, payload = f
                if op == 0x9:
                    c_pings += 1
                elif op == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    how = f"close frame {code}"
                    # after a close frame the server should drop TCP too: read to EOF
                    await bounded(c.reader.read(), STEP, "EOF after the close frame")
                    how += ", then EOF"
                    break
            dropped_after = time.monotonic() - t_c
            c.abort()
            expect(c_pings >= 1, f"the silent client was closed ({how}) after {dropped_after:.2f}s "
                   "without ever being pinged")
            expect(dropped_after <= 4 * interval,
                   f"the silent client was dropped {dropped_after:.2f}s after connecting "
                   f"({dropped_after / interval:.1f} intervals); expected within 2 intervals "
                   f"(+2 slack) = {4 * interval:g}s")
            self.ok("a client that never answers pings is dropped",
                    f"{how} after {dropped_after:.2f}s = {dropped_after / interval:.1f} intervals, "
                    f"{c_pings} ping(s) unanswered")

            self.begin("logs `client N gone: pong timeout`")
            line = await srv.wait_line(lambda l: l.startswith(f"client {id_c} gone"), 0, STEP,
                                       f"`client {id_c} gone: ...`")
            expect(line == f"client {id_c} gone: pong timeout",
                   f"logged {line!r}, expected 'client {id_c} gone: pong timeout'")
            self.ok("logs `client N gone: pong timeout`", line)

            # the well-behaved clients stay for at least 4 intervals (5 measured here)
            self.begin("well-behaved clients stay connected and are pinged")
            stay = 5 * interval
            left = t_a + stay - time.monotonic()
            if left > 0:
                # the condition under test is "still connected after this long":
                # nothing to poll for, the time itself is what is measured
                await asyncio.sleep(left)
            waited = time.monotonic() - t_a
            expect(a.state is State.OPEN, f"the websockets client was closed ({a.protocol.close_rcvd}) "
                   f"within {waited:.2f}s")
            await ping_barrier(a, "the websockets client")  # still really alive
            expect(not b_task.done(), f"the answering raw client was closed ({b_end}) "
                   f"within {waited:.2f}s")
            for cid, who in ((id_a, "websockets client"), (id_b, "answering raw client")):
                expect(not gone_lines(cid), f"the {who} (client {cid}) was dropped: {gone_lines(cid)}")
            n_a, n_b = len(a.pings_received), len(b_pings)
            expect(n_a >= 3, f"the websockets client got {n_a} ping(s) in {waited:.2f}s "
                   f"({waited / interval:.1f} intervals), expected >= 3")
            expect(n_b >= 3, f"the answering raw client got {n_b} ping(s) in {waited:.2f}s, expected >= 3")
            self.ok("well-behaved clients stay connected and are pinged",
                    f"{waited:.2f}s = {waited / interval:.1f} intervals; pings: websockets {n_a}, raw {n_b}")
            b_task.cancel()
            b.abort()
        finally:
            await a_cm.__aexit__(None, None, None)

    # broadcast -------------------------------------------------------------------------

    async def broadcast(self, srv: Server) -> None:
        url = f"ws://{srv.addr}/"
        cms = [ws_connect(url) for _ in range(3)]
        conns = []
        try:
            for cm in cms:
                conns.append(await cm.__aenter__())
            A, B, C = conns
            for ws, who in zip(conns, "ABC"):
                # the server registers a client just after writing its 101; a pong
                # proves that client's connection is running, hence registered
                await ping_barrier(ws, who)

            self.begin("A's text reaches B and C")
            m1 = "m1 from A: héllo 🎉 " + os.urandom(4).hex()
            await bounded(A.send(m1), STEP, "A's message to be sent")
            await expect_message(B, m1, "B")
            await expect_message(C, m1, "C")
            self.ok("A's text reaches B and C")

            self.begin("B's text reaches A and C")
            m2 = "m2 from B " + os.urandom(4).hex()
            await bounded(B.send(m2), STEP, "B's message to be sent")
            # A's next message being m2 shows A never got its own m1; C's shows it got m1 once
            await expect_message(A, m2, "A (never its own m1)")
            await expect_message(C, m2, "C (m1 exactly once)")
            self.ok("B's text reaches A and C", "A never got its own message; C got A's once")

            self.begin("C's binary reaches A and B")
            m3 = b"\x00\xffm3 from C" + os.urandom(8)
            await bounded(C.send(m3), STEP, "C's message to be sent")
            await expect_message(A, m3, "A")
            await expect_message(B, m3, "B (m1 exactly once, never its own m2)")
            self.ok("C's binary reaches A and B", "binary stays binary")

            self.begin("each message exactly once, never to its sender")
            m4 = "m4 from A " + os.urandom(4).hex()
            await bounded(A.send(m4), STEP, "A's message to be sent")
            await expect_message(B, m4, "B (m3 exactly once)")
            await expect_message(C, m4, "C (never its own m3)")
            window = min(0.5, STEP)
            await asyncio.gather(expect_quiet(A, "A", window), expect_quiet(B, "B", window),
                                 expect_quiet(C, "C", window))
            self.ok("each message exactly once, never to its sender",
                    f"ordering checked after each send, then {window:g}s quiet")
        finally:
            for cm in reversed(cms[: len(conns)]):
                await cm.__aexit__(None, None, None)

    # wss -------------------------------------------------------------------------------

    async def wss(self, srv: Server, cert: Path) -> None:
        url = f"wss://{srv.addr}/"
        trusting = ssl.create_default_context(cafile=str(cert))

        self.begin("echo over wss:// with a client trusting the cert")
        async with ws_connect(url, ssl=trusting) as ws:
            tls = ws.transport.get_extra_info("ssl_object")
            for msg in ("over TLS: héllo 🎉", bytes(range(256))):
                await bounded(ws.send(msg), STEP, "the message to be sent")
                got = await recv(ws, f"the echo of {describe(msg)}")
                expect(type(got) is type(msg) and got == msg,
                       f"sent {describe(msg)}, got {describe(got)}")
            detail = f"{tls.version()}, {tls.cipher()[0]}" if tls else ""
        self.ok("echo over wss:// with a client trusting the cert", detail)

        self.begin("certificate valid for the name localhost")
        async with ws_connect(url, ssl=trusting, server_hostname="localhost") as ws:
            await bounded(ws.send("by name"), STEP, "the message to be sent")
            await expect_message(ws, "by name", "the client checking the name localhost")
        self.ok("certificate valid for the name localhost")

        self.begin("a client not trusting the cert fails")
        untrusting = ssl.create_default_context()  # system roots only
        try:
            async with ws_connect(url, ssl=untrusting) as ws:
                raise CheckFailed("a client with only the system roots connected over wss://")
        except ssl.SSLCertVerificationError as e:
            why = e.verify_message or str(e)
        except CheckFailed:
            raise
        except Exception as e:  # noqa: BLE001 - anything else is not a verification failure
            raise CheckFailed(f"expected a certificate verification error, got {type(e).__name__}: {e}")
        # and the server goes on serving trusted clients after that failed handshake
        async with ws_connect(url, ssl=trusting) as ws:
            await bounded(ws.send("still here"), STEP, "the message to be sent")
            await expect_message(ws, "still here", "the trusted client after the failure")
        self.ok("a client not trusting the cert fails", f"{why}; the server still serves afterwards")


def make_cert(dir: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1 and localhost, with its key (PEM)."""
    cert, key = dir / "cert.pem", dir / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", "/CN=wshub examples test",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60)
        return cert, key, "openssl CLI"
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wshub examples test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(pkey, hashes.SHA256())
    )
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert, key, "cryptography"


async def main_async(run: Run, names: list[str]) -> None:
    for name in names:
        if name == "simple":
            await run.with_server("simple", [], run.simple)
        elif name == "echo":
            await run.with_server("echo", [], run.echo)
        elif name == "express":
            await run.with_server("express", [], run.express)
        elif name == "heartbeat":
            await run.with_server("heartbeat", ["--interval-ms", "300"],
                                  lambda srv: run.heartbeat(srv, 0.3))
        elif name == "broadcast":
            await run.with_server("broadcast", [], run.broadcast)
        elif name == "wss":
            with tempfile.TemporaryDirectory(prefix="wshub-wss-") as tmp:
                run.example, run.check = "wss", "self-signed certificate"
                cert, key, how = make_cert(Path(tmp))
                run.ok("self-signed certificate", f"127.0.0.1 + localhost, made with {how}")
                await run.with_server("wss", ["--cert", str(cert), "--key", str(key)],
                                      lambda srv: run.wss(srv, cert))


def main() -> int:
    global STEP
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("examples", nargs="*", metavar="EXAMPLE",
                   help=f"which to run (default: all of {', '.join(ALL)})")
    p.add_argument("--bin-dir", type=Path,
                   default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "examples")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per network step (default 10)")
    args = p.parse_args()
    STEP = args.timeout
    names = args.examples or ALL
    for n in names:
        if n not in ALL:
            p.error(f"unknown example {n!r} (choose from {', '.join(ALL)})")
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(var, None)

    run = Run(args.bin_dir)
    t0 = time.monotonic()

    async def guarded() -> None:
        try:
            await asyncio.wait_for(main_async(run, names), 300 * STEP)
        except asyncio.TimeoutError:
            raise CheckFailed(f"the whole run exceeded {300 * STEP:g}s") from None
        except CheckFailed:
            raise
        except Exception as e:  # an unexpected error fails the check under way
            raise CheckFailed(f"{type(e).__name__}: {e}") from e

    async def top() -> int:
        try:
            await guarded()
        except CheckFailed as e:
            print(f"FAIL {run.example} {run.check}: {e}", flush=True)
            if run.server is not None and run.server.proc is not None:
                await run.server.stop()
                print(run.server.tails(), file=sys.stderr, flush=True)
            return 1
        return 0

    try:
        status = asyncio.run(top())
    finally:
        kill_leftovers()
    elapsed = time.monotonic() - t0
    if status == 0:
        print(f"examples: {run.count} checks passed ({', '.join(names)}) in {elapsed:.1f}s", flush=True)
    else:
        print(f"examples: FAILED after {run.count} passing checks, {elapsed:.1f}s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

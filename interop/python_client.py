#!/usr/bin/env python3
"""Interop battery: Python `websockets` as the client of an ECHO server.

    python_client.py URL [--subprotocol NAME] [--server-deflate yes|no]
                         [--timeout SECS]

Prints one line per check and exits 1 at the first failure (2 on bad usage).
Every network step is bounded (--timeout per step, 4x that for 1 MiB
messages) and the whole battery by a global deadline.

--server-deflate yes (default): when the client offers permessage-deflate,
the server must accept it; `no`: the server must decline it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect

NAME = "python"
MIB = 1024 * 1024

passed = 0
current = "connect"  # the check under way, named in a failure


def begin(label: str) -> None:
    global current
    current = label


class CheckFailed(Exception):
    pass


def ok(label: str, detail: str = "") -> None:
    global passed
    passed += 1
    print(f"ok    {NAME} {label}" + (f" ({detail})" if detail else ""), flush=True)


def skip(label: str, why: str) -> None:
    print(f"skip  {NAME} {label}: {why}", flush=True)


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise CheckFailed(why)


def text_of_bytes(n: int, seed: int) -> str:
    """A str whose UTF-8 encoding is exactly n bytes, mixing 1- to 4-byte characters."""
    rnd = random.Random(seed)
    alphabet = ["a", "Z", "0", " ", "é", "ß", "Ж", "€", "日", "本", "🎉", "𝄞"]
    parts, size = [], 0
    while size < n - 4:
        ch = rnd.choice(alphabet)
        parts.append(ch)
        size += len(ch.encode())
    parts.append("x" * (n - size))
    s = "".join(parts)
    assert len(s.encode()) == n
    return s


def describe(data: str | bytes) -> str:
    kind = "text" if isinstance(data, str) else "binary"
    size = len(data.encode()) if isinstance(data, str) else len(data)
    return f"{kind} {size} bytes"


class Battery:
    def __init__(self, url: str, step: float, server_deflate: bool) -> None:
        self.url = url
        self.step = step
        self.server_deflate = server_deflate

    def open(self, deflate: bool, subprotocols: list[str] | None = None):
        return connect(
            self.url,
            compression="deflate" if deflate else None,
            subprotocols=subprotocols,
            max_size=64 * MIB,
            open_timeout=self.step,
            close_timeout=self.step,
            ping_interval=None,
            proxy=None,
        )

    async def roundtrip(self, ws: ClientConnection, msg: str | bytes, step: float) -> None:
        await asyncio.wait_for(ws.send(msg), step)
        got = await asyncio.wait_for(ws.recv(), step)
        expect(type(got) is type(msg), f"sent {describe(msg)}, got back {describe(got)}")
        expect(got == msg, f"sent {describe(msg)}, got back different content ({describe(got)})")

    async def messages(self, mode: str, deflate: bool) -> None:
        label = f"[deflate {mode}]"
        begin(f"{label} handshake")
        async with self.open(deflate) as ws:
            ext = ws.response.headers.get("Sec-WebSocket-Extensions")
            if deflate and self.server_deflate:
                expect(ext is not None and "permessage-deflate" in ext,
                       f"offered permessage-deflate, response Sec-WebSocket-Extensions: {ext!r}")
            else:
                expect(ext is None or "permessage-deflate" not in ext,
                       f"expected no permessage-deflate, response Sec-WebSocket-Extensions: {ext!r}")
            ok(f"{label} handshake", f"Sec-WebSocket-Extensions: {ext or '(none)'}")

            cases: list[tuple[str, str | bytes, float, str]] = [
                ("text round trip",
                 "héllo wörld — Ωμέγα, Жизнь, 日本語, emoji 🎉, clef 𝄞",
                 self.step, "multi-byte UTF-8, 1 to 4 bytes a character"),
                ("empty text round trip", "", self.step, ""),
                ("binary round trip", bytes(range(256)), self.step, "all 256 byte values"),
                ("1 MiB binary round trip", random.Random(1).randbytes(MIB), 4 * self.step, ""),
                ("1 MiB text round trip", text_of_bytes(MIB, 2), 4 * self.step, "multi-byte UTF-8"),
                # Compressible: exercises the deflate path for real.
                ("300 kB compressible text round trip", "abc" * 100_000, 4 * self.step, ""),
            ]
            for name, msg, step, detail in cases:
                begin(f"{label} {name}")
                await self.roundtrip(ws, msg, step)
                ok(f"{label} {name}", detail)

            begin(f"{label} 20 messages in sequence")
            for i in range(20):
                await self.roundtrip(ws, f"message {i} " + "ä" * i, self.step)
            ok(f"{label} 20 messages in sequence")

    async def ping(self) -> None:
        begin("ping -> pong with the same payload")
        async with self.open(False) as ws:
            pongs: list[bytes] = []
            original = ws.acknowledge_pings

            def record(data: bytes) -> None:
                pongs.append(bytes(data))
                original(data)

            ws.acknowledge_pings = record  # type: ignore[method-assign]
            payload = b"wshub-ping-\x00\xff-123"
            waiter = await asyncio.wait_for(ws.ping(payload), self.step)
            try:
                await asyncio.wait_for(waiter, self.step)
            except asyncio.TimeoutError:
                raise CheckFailed(f"no pong with the ping's payload {payload!r}; pongs seen: {pongs!r}")
            expect(pongs and pongs[-1] == payload, f"pong payload {pongs!r} != {payload!r}")
            ok("ping -> pong with the same payload", repr(payload))

    async def close_with(self, code: int, reason: str) -> None:
        begin(f"client close {code} {reason!r}")
        async with self.open(False) as ws:
            await asyncio.wait_for(ws.close(code, reason), 2 * self.step)
            rcvd = ws.protocol.close_rcvd
            expect(rcvd is not None, f"closed with {code}: the server sent no close frame")
            expect(rcvd.code == code,
                   f"closed with {code} {reason!r}: server replied {rcvd.code} {rcvd.reason!r}")
            ok(f"client close {code}" + (f" {reason!r}" if reason else "") + " -> server echoes the code",
               f"server sent {rcvd.code} {rcvd.reason!r}")

    async def raw_invalid(self, label: str, frame: bytes) -> None:
        begin(f"invalid frame ({label})")
        async with self.open(False) as ws:
            ws.transport.write(frame)  # bypasses the library's framing
            try:
                await asyncio.wait_for(ws.recv(), 2 * self.step)
                raise CheckFailed(f"{label}: the server answered with a message instead of closing")
            except asyncio.TimeoutError:
                raise CheckFailed(f"{label}: the server did not close within {2 * self.step}s")
            except Exception as e:  # ConnectionClosed*
                if isinstance(e, CheckFailed):
                    raise
            await asyncio.wait_for(ws.wait_closed(), 2 * self.step)
            rcvd = ws.protocol.close_rcvd
            expect(rcvd is not None, f"{label}: the server dropped the TCP connection without a close frame")
            expect(rcvd.code == 1002, f"{label}: the server closed with {rcvd.code} {rcvd.reason!r}, not 1002")
            ok(f"invalid frame ({label}) -> close 1002", f"reason {rcvd.reason!r}")

    async def subprotocol(self, name: str) -> None:
        begin(f"subprotocol {name!r}")
        async with self.open(False, [name]) as ws:
            header = ws.response.headers.get("Sec-WebSocket-Protocol")
            expect(ws.subprotocol == name and header == name,
                   f"offered subprotocol {name!r}, server chose {header!r}")
            await self.roundtrip(ws, "with subprotocol", self.step)
            ok(f"subprotocol {name!r} negotiated", f"Sec-WebSocket-Protocol: {header}")


def masked_frame(first: int, payload: bytes) -> bytes:
    """One client frame: first byte as given, masked, payload < 126 bytes."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([first, 0x80 | len(payload)]) + key + body


async def run(args: argparse.Namespace) -> None:
    b = Battery(args.url, args.timeout, args.server_deflate == "yes")
    await b.messages("on", True)
    await b.messages("off", False)
    await b.ping()
    await b.close_with(1000, "")
    await b.close_with(4000, "reason")
    # FIN + reserved opcode 0x3; then FIN + text, with no mask bit.
    await b.raw_invalid("reserved opcode 0x3", masked_frame(0x83, b"hi"))
    await b.raw_invalid("unmasked client frame", bytes([0x81, 0x02]) + b"hi")
    await b.raw_invalid("RSV2 set", masked_frame(0x81 | 0x20, b"hi"))
    if args.subprotocol:
        await b.subprotocol(args.subprotocol)
    else:
        skip("subprotocol", "no --subprotocol NAME given")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--subprotocol")
    ap.add_argument("--server-deflate", choices=["yes", "no"], default="yes")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per network step")
    args = ap.parse_args()
    u = urlsplit(args.url)
    if u.scheme not in ("ws", "wss") or not u.hostname:
        ap.error(f"not a ws:// URL: {args.url}")

    total = 60 * args.timeout  # the whole battery
    started = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run(args), total))
    except CheckFailed as e:
        print(f"FAIL  {NAME} {current}: {e}", flush=True)
        return 1
    except asyncio.TimeoutError:
        print(f"FAIL  {NAME} {current}: timed out (step bound {args.timeout:.0f}s, battery {total:.0f}s)", flush=True)
        return 1
    except Exception as e:  # connection refused, handshake rejected, closed early...
        print(f"FAIL  {NAME} {current}: {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"{NAME} client: all {passed} checks passed in {time.monotonic() - started:.1f}s against {args.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run kosoku's CLI with a fix for its "Strings must be encoded before hashing" bug.

    kosoku_fix.py [kosoku CLI arguments...]

The bug (kosoku 0.1.0): in the permessage-deflate cases 12.x and 13.x, when
`server_no_context_takeover` was negotiated and the server sends a message
*uncompressed* (RSV1 clear, which RFC 7692 allows per message), kosoku passes
the case's `onMessage` a Python `str` instead of `bytes`: for a binary
message the bytes decoded as Latin-1, for a text message the UTF-8 text. The
Autobahn case then calls `hashlib.sha1().update(msg)`, which raises
`TypeError: Strings must be encoded before hashing`, and the case ends in
ERROR although nothing was wrong on the wire.

The fix wraps `onMessage` of exactly those case classes (the ones built in
kosoku's case12_x_x module) and turns such a `str` back into the bytes that
were on the wire: `msg.encode("latin-1")` for binary, `msg.encode("utf-8")`
for text. A wrong echo still changes the SHA-1 and fails the case. Nothing
else is touched; the cases' own code and verdicts are unchanged.

It is checked against kosoku 0.1.0 only; on another version it stops, so that
a newer kosoku is looked at (is the bug fixed? does the fix still apply?).
"""

from __future__ import annotations

import sys
from importlib.metadata import version

FIXED_FOR = "0.1.0"
EXPECTED_CLASSES = 90 + 126  # 12.1.1-12.5.18 and 13.1.1-13.7.18


def _to_wire_bytes(msg: object, binary: bool) -> object:
    if isinstance(msg, str):
        return msg.encode("latin-1" if binary else "utf-8")
    return msg


def apply_fix() -> int:
    installed = version("kosoku")
    if installed != FIXED_FOR:
        sys.exit(
            f"kosoku_fix.py: written for kosoku {FIXED_FOR}, found {installed}: check whether "
            "the bug is fixed upstream, then adapt or drop conformance/kosoku_fix.py"
        )
    import kosoku.cases  # builds the case index, puts the case modules on sys.path
    import case12_x_x  # the module that generates the 12.x and 13.x case classes

    original = case12_x_x.onMessage
    patched = 0
    for cls in kosoku.cases.CASES.values():
        if cls.__dict__.get("onMessage") is not original:
            continue

        def onMessage(self, msg, binary, _original=original):  # noqa: N802 (Autobahn's name)
            return _original(self, _to_wire_bytes(msg, binary), binary)

        cls.onMessage = onMessage
        patched += 1
    if patched != EXPECTED_CLASSES:
        sys.exit(
            f"kosoku_fix.py: expected {EXPECTED_CLASSES} case classes to fix, found {patched}; "
            "kosoku's case layout changed"
        )
    return patched


def main() -> None:
    apply_fix()
    from kosoku._cli import main as kosoku_main

    sys.argv[0] = "kosoku"
    kosoku_main()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Summarize an Autobahn (kosoku) fuzzingclient run.

    summarize.py [INDEX] [--out FILE] [--save FILE] [--compare BASELINE]
                 [--strict] [--partial] [--agent NAME]

INDEX is the runner's index.json (default conformance/reports/servers/index.json,
shaped like Autobahn's reports/servers/index.json: agent -> case id ->
{behavior, behaviorClose, ...}), or a normalized results file written by this
script.

Each case counts once, by the worse of its `behavior` and `behaviorClose`, as
Autobahn's report colours it: a close verdict of WRONG CODE or FAILED BY CLIENT
counts as NON-STRICT, UNCLEAN or FAILED as FAILED. kosoku also has ERROR: the
case could not be run to a verdict (the runner crashed, or the server dropped
out); an ERROR always fails the summary.

--out / --save  write the normalized results: {"case id": "VERDICT", ...} in
                case order. --out always; --save only when every check passed.
--compare FILE  exit 1, listing each case whose verdict differs from FILE.
--strict        exit 1 unless every case is OK or INFORMATIONAL (the policy
                for wshub's baseline).
--partial       with --compare: cases of the baseline that were not run are
                not differences (a run of selected cases).

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Worst last. INFORMATIONAL is a non-verdict, so it ranks just above OK.
RANK = ["OK", "INFORMATIONAL", "NON-STRICT", "UNIMPLEMENTED", "FAILED", "ERROR"]
TALLY_ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]
ACCEPTED = {"OK", "INFORMATIONAL"}

# behaviorClose -> the verdict it counts as.
CLOSE_AS = {
    "OK": "OK",
    "INFORMATIONAL": "INFORMATIONAL",
    "WRONG CODE": "NON-STRICT",
    "FAILED BY CLIENT": "NON-STRICT",
    "UNCLEAN": "FAILED",
    "FAILED": "FAILED",
}

UPDATE_HINT = (
    "if the change is an improvement, update the baseline with "
    "`conformance/run.sh --update-baseline`; otherwise fix the server"
)


def case_key(case_id: str) -> list[int]:
    return [int(p) if p.isdigit() else 0 for p in case_id.split(".")]


def worse(a: str, b: str) -> str:
    ra = RANK.index(a) if a in RANK else len(RANK) - 1
    rb = RANK.index(b) if b in RANK else len(RANK) - 1
    return RANK[max(ra, rb)]


def verdict(entry: dict) -> str:
    behavior = entry.get("behavior", "ERROR")
    if behavior not in RANK:
        behavior = "FAILED"  # e.g. NO_CLOSE, or anything unknown
    close = CLOSE_AS.get(entry.get("behaviorClose", "FAILED"), "FAILED")
    return worse(behavior, close)


def load(path: Path, agent: str | None) -> tuple[dict[str, str], dict[str, dict]]:
    """Return (case id -> verdict, case id -> raw index entry or {})."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"summarize: cannot read {path}: {e}")
    if not isinstance(data, dict) or not data:
        sys.exit(f"summarize: {path} holds no results")
    if all(isinstance(v, str) for v in data.values()):  # normalized file
        return dict(data), {k: {} for k in data}
    agents = sorted(data)
    if agent is None:
        if len(agents) != 1:
            sys.exit(f"summarize: {path} has several agents {agents}; pick one with --agent")
        agent = agents[0]
    if agent not in data:
        sys.exit(f"summarize: agent {agent!r} not in {path} (has {agents})")
    raw = data[agent]
    return {cid: verdict(e) for cid, e in raw.items()}, raw


def ordered(results: dict[str, str]) -> dict[str, str]:
    return {k: results[k] for k in sorted(results, key=case_key)}


def write(path: Path, results: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ordered(results), indent=1) + "\n")


def describe(cid: str, raw: dict) -> str:
    if not raw:
        return cid
    extra = f"behavior={raw.get('behavior')} behaviorClose={raw.get('behaviorClose')}"
    if raw.get("remoteCloseCode") is not None:
        extra += f" remoteCloseCode={raw.get('remoteCloseCode')}"
    return f"{cid} ({extra})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", nargs="?", default=str(HERE / "reports" / "servers" / "index.json"))
    ap.add_argument("--agent")
    ap.add_argument("--out", help="write the normalized results here")
    ap.add_argument("--save", action="append", default=[], help="write them here too, only if every check passed")
    ap.add_argument("--compare", help="baseline: normalized results to compare with")
    ap.add_argument("--strict", action="store_true", help="every case must be OK or INFORMATIONAL")
    ap.add_argument("--partial", action="store_true", help="baseline cases not run are not differences")
    args = ap.parse_args()

    results, raw = load(Path(args.index), args.agent)
    results = ordered(results)
    if args.out:
        write(Path(args.out), results)

    tally = Counter(results.values())
    print(f"Autobahn cases run: {len(results)}")
    for v in TALLY_ORDER:
        if tally.get(v) or v != "ERROR":
            print(f"  {v:<14} {tally.get(v, 0)}")
    for v in TALLY_ORDER[1:]:
        ids = [c for c, r in results.items() if r == v]
        if ids:
            print(f"{v}:")
            for c in ids:
                print(f"  {describe(c, raw.get(c, {}))}")

    # Time spent per case group, when the index carries durations.
    durations: Counter[str] = Counter()
    for cid, e in raw.items():
        if isinstance(e.get("duration"), (int, float)):
            durations[cid.split(".")[0]] += e["duration"]
    if durations:
        total = sum(durations.values()) / 1000
        groups = ", ".join(
            f"{g}.x {durations[g] / 1000:.1f}s"
            for g in sorted(durations, key=lambda g: -durations[g])[:4]
        )
        print(f"case time: {total:.1f}s in all; most in {groups}")

    ok = True
    errors = [c for c, r in results.items() if r == "ERROR"]
    if errors:
        ok = False
        print(
            f"\nFAIL: {len(errors)} case(s) ended in ERROR (no verdict: the runner crashed "
            "on the case or the server went away): " + ", ".join(errors)
            + "\n  see each case's `result` in the report; a kosoku bug belongs in "
            "conformance/kosoku_fix.py or, if it cannot be fixed, conformance/exclude.txt with its reason"
        )

    if args.strict:
        bad = [c for c, r in results.items() if r not in ACCEPTED]
        if bad:
            ok = False
            print(f"\nFAIL (--strict): {len(bad)} case(s) not OK or INFORMATIONAL:")
            for c in bad:
                print(f"  {c}: {results[c]}")

    if args.compare:
        try:
            baseline = json.loads(Path(args.compare).read_text())
        except (OSError, ValueError) as e:
            print(f"summarize: cannot read baseline {args.compare}: {e}", file=sys.stderr)
            return 2
        changes = []
        for c in sorted(set(baseline) | set(results), key=case_key):
            was, now = baseline.get(c), results.get(c)
            if was == now:
                continue
            if now is None:
                if not args.partial:
                    changes.append(f"  {c}: {was} -> not run")
                continue
            if was is None:
                changes.append(f"  {c}: not in baseline -> {now}")
                continue
            better = RANK.index(now) < RANK.index(was) if now in RANK and was in RANK else False
            changes.append(f"  {c}: {was} -> {now}" + (" (better)" if better else " (WORSE)"))
        if changes:
            ok = False
            print(f"\nFAIL: {len(changes)} case(s) differ from the baseline {args.compare}:")
            print("\n".join(changes))
            print(UPDATE_HINT)
        else:
            print(f"\nsame verdicts as the baseline {args.compare}")

    if ok:
        for p in args.save:
            write(Path(p), results)
            print(f"wrote {p}")
    elif args.save:
        print("not written (checks failed): " + ", ".join(args.save))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

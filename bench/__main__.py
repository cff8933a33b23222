"""``python -m bench NAME``: run one benchmark, print its table, save its figures.

A benchmark is a module ``bench/NAME.py`` with ``run(args) -> dict``; the dict
has ``"rows"`` (a list of dicts, printed as a table in order) and may have
anything else worth keeping. The whole dict is written to
``bench/results/NAME-<timestamp>.json`` with the machine it ran on. Each
benchmark runs its reference (native, bindfs, bubblewrap, the host) in the same
run, alternated, and reports ratios: figures from different runs are not
compared.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(
        p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "common"
    )


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("name", help="benchmark: " + ", ".join(available()))
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args(argv)
    if args.name not in available():
        print(f"bench: unknown benchmark {args.name!r}; known: {', '.join(available())}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{args.name}")
    from kernel import cgroup
    favordynmods = cgroup.favors_dynamic_moves()
    print(f"cgroup2 favordynmods: {'on' if favordynmods else 'off'}", flush=True)
    started = time.time()
    result = module.run(args)
    print_table(result.get("rows", []))
    result["benchmark"] = args.name
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    result["machine"] = {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # Each pea transition's cgroup move costs an RCU grace period
        # without it (docs/ARCHITECTURE.md): figures taken with and without
        # it are not comparable for pods with transitions.
        "cgroup2_favordynmods": favordynmods,
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{args.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfigures written to {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

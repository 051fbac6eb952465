#!/usr/bin/env python3
"""Draws docs/benchmarks.png from lcs-load's JSON lines: for each scenario with load steps,
delivered rate and p50/p99 latency against offered load (the newest full-size run of each);
the closed-loop ("max") step as a line.

    pip install matplotlib
    python3 tests/load/chart.py [target/lcs-load/results.jsonl] [docs/benchmarks.png]
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCENARIOS = ["im-outbound", "im-setup", "im-inbound", "presence-fanout", "presence-inbound",
             "im-prosody"]


def newest_runs(path):
    runs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("smoke") or not r.get("steps"):
                continue
            runs[r["scenario"]] = r  # later lines are newer
    return runs


def offered(step):
    """Offered load of an open-loop step, per second."""
    return float(step["offered"][:-2])


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "target/lcs-load/results.jsonl"
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/benchmarks.png"
    runs = newest_runs(src)
    names = [n for n in SCENARIOS if n in runs]
    if not names:
        sys.exit(f"no full-size runs in {src}")
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), squeeze=False)
    for i, name in enumerate(names):
        steps = [s for s in runs[name]["steps"] if s["offered"].endswith("/s")]
        steps.sort(key=offered)
        closed = [s for s in runs[name]["steps"] if not s["offered"].endswith("/s")]
        x = [offered(s) / 1000 for s in steps]
        top, bottom = axes[0][i], axes[1][i]
        top.plot(x, [s["per_second"] / 1000 for s in steps], "o-", label="delivered")
        top.plot(x, x, ":", color="grey", label="offered")
        for s in closed:
            top.axhline(s["per_second"] / 1000, color="green", linestyle="--", linewidth=0.8,
                        label="closed loop (max)")
        top.set_title(name)
        top.set_ylabel("thousand per second")
        top.legend(fontsize=8)
        bottom.semilogy(x, [max(s["p99_us"], 1) / 1000 for s in steps], "o-", label="p99")
        bottom.semilogy(x, [max(s["p50_us"], 1) / 1000 for s in steps], "s--", label="p50")
        bottom.axhline(1.0, color="red", linewidth=0.8, label="1 ms target")
        bottom.set_xlabel("offered, thousand per second")
        bottom.set_ylabel("latency, ms")
        bottom.legend(fontsize=8)
    fig.suptitle("lcs-bridge on one core (mutual TLS), load generator on the other")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

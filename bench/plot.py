"""
Draw a results file of bench/run.py as a PNG beside it (matplotlib, the bench
extra):

    python bench/plot.py bench/results/cpython.json
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

MAILSVC, BASELINE = "#1f77b4", "#bbbbbb"
# The p99 target at 100k deliveries/s offered to 1000 clients.
P99_TARGET_MS = {"cpython": 20, "pypy": 10}
PLAIN = FuncFormatter(lambda v, _: "%g" % v)


def _runs(results, prefix, server):
    """Scenario -> its run (the median of repeated runs), for one server."""
    from run import find, scenarios

    found = {name: find(results, name, server) for name in scenarios(results, server)}
    return {
        name: run
        for name, run in found.items()
        if name.startswith(prefix) and run is not None and "error" not in run
    }


def _bars(ax, names, mine, theirs, fmt="{:.0f}"):
    x = range(len(names))
    width = 0.4
    ax.bar([i - width / 2 for i in x], mine, width, color=MAILSVC, label="mailsvc")
    ax.bar([i + width / 2 for i in x], theirs, width, color=BASELINE, label="bare Twisted")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if b:
            ax.annotate(
                "%.0f%%" % (100 * a / b), (i - width / 2, a), ha="center", va="bottom", fontsize=7
            )


def plot(path):
    path = Path(path)
    results = json.loads(path.read_text())
    meta = results["meta"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))

    # Chat throughput, saturated.
    ax = axes[0][0]
    mine, theirs = _runs(results, "chat saturated", "mailsvc"), _runs(results, "chat saturated", "baseline")
    names = sorted(mine, key=lambda s: int(s.split()[-1]))
    _bars(
        ax,
        ["%s clients" % n.split()[-1] for n in names],
        [mine[n]["per_s"] / 1000 for n in names],
        [theirs[n]["per_s"] / 1000 if n in theirs else 0 for n in names],
    )
    ax.set_ylabel("thousand deliveries / s")
    ax.set_title("Chat fan-out, 10 senders, 4 messages in flight each")
    ax.legend(fontsize=8)

    # Chat latency at offered rates.
    ax = axes[0][1]
    mine = {k: v for k, v in _runs(results, "chat", "mailsvc").items() if "/s" in k}
    theirs = {k: v for k, v in _runs(results, "chat", "baseline").items() if "/s" in k}
    names = sorted(mine, key=lambda s: (int(s.split()[-1]), int(s.split()[1][:-4])))
    x = range(len(names))
    width = 0.4
    for offset, runs, color, label in (
        (-width / 2, mine, MAILSVC, "mailsvc"),
        (width / 2, theirs, BASELINE, "bare Twisted"),
    ):
        p99 = [runs[n]["latency_us"]["p99"] / 1000 if n in runs else 0 for n in names]
        p50 = [runs[n]["latency_us"]["p50"] / 1000 if n in runs else 0 for n in names]
        ax.bar([i + offset for i in x], p99, width, color=color, label=label + " p99")
        ax.scatter([i + offset for i in x], p50, color="black", marker="_", s=200, zorder=3)
    goal = P99_TARGET_MS["pypy" if meta.get("implementation") == "PyPy" else "cpython"]
    ax.axhline(goal, color="red", linestyle="--", linewidth=1, label="p99 target (%d ms)" % goal)
    ax.set_xticks(list(x))
    ax.set_xticklabels(
        ["%s offered\n%s clients" % (n.split()[1], n.split()[-1]) for n in names], fontsize=8
    )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: "%g" % v if ("%g" % v)[0] in "25" else ""))
    ax.set_ylabel("ms from send to receipt (bar p99, tick p50)")
    ax.set_title("Chat latency at fixed offered rates")
    ax.legend(fontsize=8)

    # Mail request/response.
    ax = axes[1][0]
    mine = {k: v for k, v in _runs(results, "", "mailsvc").items() if v["mode"] == "mail"}
    theirs = {k: v for k, v in _runs(results, "", "baseline").items() if v["mode"] == "mail"}
    names = list(mine)
    _bars(
        ax,
        [n.replace(" conns depth ", " c, depth ") for n in names],
        [mine[n]["per_s"] for n in names],
        [theirs[n]["per_s"] if n in theirs else 0 for n in names],
    )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)
    ax.set_ylabel("requests / s (log)")
    ax.set_title("Mail COUNT and durable SEND vs bare echo of the same bytes")

    # Idle memory.
    ax = axes[1][1]
    mine = {k: v for k, v in _runs(results, "idle", "mailsvc").items()}
    theirs = {k: v for k, v in _runs(results, "idle", "baseline").items()}
    names = list(mine)
    _bars(
        ax,
        [n[5:] for n in names],
        [mine[n]["kib_per_conn"] for n in names],
        [theirs[n]["kib_per_conn"] if n in theirs else 0 for n in names],
    )
    ax.axhline(3, color="red", linestyle="--", linewidth=1, label="CPython target (3 KiB)")
    ax.set_ylabel("KiB of server RSS per connection")
    ax.set_title("Idle connections")
    ax.legend(fontsize=8)

    fig.suptitle(
        "mailsvc bench: %s, %s, %s%s"
        % (meta["server_python"], meta["twisted"], meta["date"], " (quick)" if meta["quick"] else ""),
        fontsize=11,
    )
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(plot(name))

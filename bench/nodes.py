"""
Mail round trips on one node over SQLite, one node over PostgreSQL, and two
nodes over one PostgreSQL database, each node pinned to a core of its own:
COUNT and durable SEND, 50 connections, not pipelined (docs/performance.md,
"Several nodes").

    python bench/nodes.py --server-python .venv/bin/python [--quick]
        [--postgres postgresql://postgres@127.0.0.1/postgres]

PostgreSQL: --postgres (or MAILSVC_BENCH_POSTGRES), a role that may create
databases; a new database per configuration, dropped afterwards. Its CPU
is read from /proc over the measuring window: the backends serving the
bench's database, and the server's shared background processes (WAL writer,
checkpointer...) that other databases on the machine may also keep busy.
Every run is bounded in time (loadgen's deadlines, a timeout here); every
server is stopped at the end.
"""

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HERE, LOADGEN, Cores, cpu_seconds, log, mailsvc_server, prepare_accounts  # noqa: E402

CONNECTIONS = 50


def postgres_processes(database):
    """{pid: 'bench' or 'shared'}: the backends of C{database}, and the
    server's background processes."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if not cmdline.startswith("postgres: "):
            continue
        if " %s " % database in cmdline:
            found[int(entry)] = "bench"
        elif any(word in cmdline for word in ("walwriter", "checkpointer", "background writer")):
            found[int(entry)] = "shared"
    return found


def postgres_cpu(processes):
    totals = {"bench": 0.0, "shared": 0.0}
    for pid, kind in processes.items():
        try:
            totals[kind] += cpu_seconds(pid)
        except OSError:
            pass
    return totals


class Run:
    def __init__(self, args):
        self.args = args
        self.python = Path(os.path.abspath(args.server_python))
        self.warmup = 0.5 if args.quick else 1.0
        self.duration = 2.0 if args.quick else 4.0
        self.rundir = HERE / "build" / "run-nodes"
        self.results = []

    def database(self):
        import psycopg

        from mailsvc.testing.postgres import with_database

        name = "mailsvc_bench_" + secrets.token_hex(4)
        with psycopg.connect(self.args.postgres, autocommit=True) as admin:
            admin.execute('CREATE DATABASE "%s"' % name)
        return name, with_database(self.args.postgres, name)

    def drop(self, name):
        import psycopg

        with psycopg.connect(self.args.postgres, autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)

    def nodes(self, config, count, db):
        cores = Cores()
        started = []
        for i in range(count):
            pinned = Cores()
            pinned.server = i % 2 if cores.server is not None else None
            directory = self.rundir / config / ("node%d" % (i + 1))
            server = mailsvc_server(self.python, directory, pinned, db=db, name="node%d" % (i + 1))
            started.append(server.start())
        return started

    def measure(self, config, nodes, database, op, cookie):
        request = {
            "COUNT": "COUNT %s\\n" % cookie,
            "SEND": "SEND sink bench %s\\nA line of body text for the benchmark.\\n.\\n" % cookie,
        }[op]
        share = CONNECTIONS // len(nodes)
        generators = []
        for node in nodes:
            command = [
                str(LOADGEN), "mail", "--port", str(node.ports["mail"]),
                "--server-pid", str(node.pid), "--conns", str(share), "--depth", "1",
                "--request", request, "--reply-lines", "1",
                "--warmup", str(self.warmup), "--duration", str(self.duration),
            ]  # fmt: skip
            if len(nodes) == 1 and Cores().generator is not None:
                command = ["taskset", "-c", str(Cores().generator)] + command
            generators.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        processes = postgres_processes(database) if database else {}
        # The window: loadgen measures from the end of its warmup.
        time.sleep(self.warmup)
        before = postgres_cpu(processes)
        time.sleep(self.duration)
        after = postgres_cpu(processes)
        outputs = []
        for generator in generators:
            out, _ = generator.communicate(timeout=self.warmup + self.duration + 240)
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        per_s = sum(o["per_s"] for o in outputs)
        seconds = max(o["seconds"] for o in outputs)
        result = {
            "config": config,
            "op": op,
            "nodes": len(nodes),
            "per_s": round(per_s),
            "p50_ms": round(max(o["latency_us"]["p50"] for o in outputs) / 1000, 2),
            "p99_ms": round(max(o["latency_us"]["p99"] for o in outputs) / 1000, 2),
            "node_cpu_pct": [round(100 * o["server_cpu_s"] / o["seconds"]) for o in outputs],
            "errors": sum(o.get("errors", 0) for o in outputs),
        }
        if database:
            result["postgres_bench_cpu_pct"] = round(
                100 * (after["bench"] - before["bench"]) / seconds
            )
            result["postgres_shared_cpu_pct"] = round(
                100 * (after["shared"] - before["shared"]) / seconds
            )
        log(json.dumps(result))
        self.results.append(result)

    def config(self, name, count, postgres):
        shutil.rmtree(self.rundir / name, ignore_errors=True)
        database, db = self.database() if postgres else (None, None)
        nodes = []
        try:
            nodes = self.nodes(name, count, db)
            cookie = prepare_accounts(nodes[0].ports["mail"])
            for op in ("COUNT", "SEND"):
                self.measure(name, nodes, database, op, cookie)
        finally:
            for node in nodes:
                node.stop()
            if database:
                self.drop(database)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "MAILSVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/postgres"
        ),
    )
    parser.add_argument("--out", default=str(HERE / "results" / "nodes.json"))
    args = parser.parse_args()
    if not LOADGEN.exists():
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(HERE / "loadgen.c")], check=True)
    run = Run(args)
    run.config("sqlite-1-node", 1, postgres=False)
    run.config("postgres-1-node", 1, postgres=True)
    run.config("postgres-2-nodes", 2, postgres=True)
    Path(args.out).write_text(json.dumps(run.results, indent=1) + "\n")
    print("%-18s %-6s %10s %8s %8s %10s %10s %10s" % (
        "config", "op", "ops/s", "p50 ms", "p99 ms", "node CPU%", "pg bench%", "pg shared%"))
    for r in run.results:
        print("%-18s %-6s %10d %8.2f %8.2f %10s %10s %10s" % (
            r["config"], r["op"], r["per_s"], r["p50_ms"], r["p99_ms"],
            "/".join(map(str, r["node_cpu_pct"])),
            r.get("postgres_bench_cpu_pct", "-"), r.get("postgres_shared_cpu_pct", "-")))


if __name__ == "__main__":
    main()

"""
The chat across nodes: fan-out on one node with the local bus, on one node
with Redis, and on two nodes each pinned to a core; and the latency of a
line that crosses from one node to the other at a fixed rate.

    make bench-cluster [BENCH_QUICK=1]      (or .venv/bin/python bench/cluster.py)

It starts its own redis-server (a free port, a directory under build/), the
nodes (twistd -n mailsvc, --bus redis://...), and bench/build/loadgen, which
reads the CPU of the node(s) and of redis-server over its measuring window
(--server-pid, --extra-pid). Results: results/cluster-<label>.json and the
table printed at the end; docs/performance.md ("Several nodes") says what
limits each figure.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import LOADGEN, Cores, log, mailsvc_server, raise_nofile, wait_idle  # noqa: E402


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.process = None

    def start(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = open(self.directory / "redis.log", "wb")
        self.process = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "yes"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while b"Ready to accept" not in (self.directory / "redis.log").read_bytes():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        return self

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % (self.port,)

    def stop(self):
        self.process.terminate()
        self.process.wait(20)
        self.log.close()


def node(python, directory, cores, role, bus, name):
    server = mailsvc_server(python, directory, cores)
    server.name = name
    server.command += ["--bus", bus, "--node", name, "--history", "0"]
    if role != "server":  # pinned to the other core
        server.command = cores.wrap(server.command, role)
    return server


def loadgen(cores, ports, pids, **options):
    command = [str(LOADGEN), "chat", "--port", str(ports[0]), "--server-pid", str(pids[0])]
    if len(ports) > 1:
        command += ["--port2", str(ports[1])]
    for pid in pids[1:]:
        command += ["--extra-pid", str(pid)]
    for key, value in options.items():
        if value is True:
            command.append("--" + key)
        else:
            command += ["--" + key, str(value)]
    done = subprocess.run(
        cores.wrap(command, "generator"), stdout=subprocess.PIPE, text=True, timeout=600,
        preexec_fn=cores.preexec("generator"),
    )  # fmt: skip
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--label", default="cpython")
    args = parser.parse_args()
    # Absolute, not resolved: the servers run in directories of their own, and
    # the venv's python is a symbolic link that must stay the venv's.
    args.server_python = os.path.abspath(args.server_python)
    raise_nofile()
    cores = Cores()
    work = HERE / "build" / "cluster"
    shutil.rmtree(work, ignore_errors=True)
    timing = dict(warmup=1.0, duration=2.0 if args.quick else 4.0)
    clients = 200 if args.quick else 1000
    results = {"meta": {"cores": cores.note, "clients": clients, **timing}, "runs": []}

    def record(scenario, run, names):
        run["scenario"] = scenario
        if "latency_us" not in run:
            raise RuntimeError("%s: %s" % (scenario, run))
        run["cpu_names"] = names
        results["runs"].append(run)
        lat = run["latency_us"]
        cpus = [run["server_cpu_s"]] + run["extra_cpu_s"]
        log(
            "  %-34s %9.0f deliveries/s  p50 %7.2f ms  p99 %7.2f ms  CPU %s"
            % (scenario, run["per_s"], lat["p50"] / 1000, lat["p99"] / 1000,
               ", ".join("%s %.0f%%" % (n, 100 * c / run["seconds"]) for n, c in zip(names, cpus)))
        )  # fmt: skip

    redis = Redis(work / "redis").start()
    try:
        # 16 in flight per sender: with two hops more (Redis, the other node) 4
        # leave a node idle between round trips.
        saturated = dict(conns=clients, senders=10, window=16, **timing)
        # 1. One node, the local bus (today's default).
        a = node(args.server_python, work / "local", cores, "server", "local", "node-a").start()
        try:
            record("one node, local bus", loadgen(cores, [a.ports["chat"]], [a.pid], **saturated),
                   ["node"])  # fmt: skip
        finally:
            a.stop()
        # 2. One node on Redis.
        bus = redis.url + "?prefix=bench-one:"
        a = node(args.server_python, work / "one", cores, "server", bus, "node-a").start()
        try:
            wait_idle(a.pid)
            record(
                "one node, redis bus",
                loadgen(cores, [a.ports["chat"]], [a.pid, redis.process.pid], **saturated),
                ["node", "redis"],
            )
        finally:
            a.stop()
        # 3. Two nodes, one per core, the clients half on each; then, on
        # fresh nodes (the last run's members may still be leaving), a line
        # crossing from node A to node B at 10k lines a second.
        crossing = dict(conns=2, senders=1, rate=10000, cross=True, **dict(timing, duration=5.0))
        for scenario, options in (
            ("two nodes, redis bus", saturated),
            ("a line A -> B at 10k lines/s", crossing),
        ):
            bus = redis.url + "?prefix=bench-%d:" % (len(results["runs"]),)
            where = work / str(len(results["runs"]))
            a = node(args.server_python, where / "a", cores, "server", bus, "node-a").start()
            b = node(args.server_python, where / "b", cores, "generator", bus, "node-b").start()
            try:
                pids = [a.pid, b.pid, redis.process.pid]
                ports = [a.ports["chat"], b.ports["chat"]]
                record(scenario, loadgen(cores, ports, pids, **options),
                       ["node-a", "node-b", "redis"])  # fmt: skip
            finally:
                a.stop()
                b.stop()
    finally:
        redis.stop()
    out = HERE / "results" / ("cluster-%s%s.json" % (args.label, "-quick" if args.quick else ""))
    out.write_text(json.dumps(results, indent=1) + "\n")
    log("written %s" % (out,))


if __name__ == "__main__":
    main()

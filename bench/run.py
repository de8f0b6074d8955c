"""
mailsvc's bench: start the servers, drive them with bench/loadgen, print the
table, write the figures as JSON and draw the plot (see bench/README.md and
docs/performance.md). Run it with `make bench`.

    python bench/run.py --server-python .venv/bin/python [--quick]

The server under test is C{twistd -n mailsvc} from the virtualenv of
--server-python, pinned to one core; the generator and this script run on
another. Every generator run is bounded in time (loadgen's own deadlines and
alarm, and a subprocess timeout here); every server is stopped at the end,
killed if it does not stop.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOADGEN = HERE / "build" / "loadgen"
SENDCOST = HERE / "build" / "sendcost"

# The targets of the performance issue; see docs/performance.md.
TARGETS = {
    "chat_saturated_ratio": 0.80,  # 1000 clients, vs bare Twisted broadcast (CPython)
    "pypy_saturated_per_s": 3_000_000,  # 1000 clients, 10 senders: ahead of InspIRCd, ngircd
    "chat_p99_ms": {"cpython": 20.0, "pypy": 10.0},  # 100k/s offered, 1000 clients
    "chat_cpu_us": {"cpython": 12.0, "pypy": 6.0},  # per unbatched delivery (10k/s, 1000 clients)
    "count_ratio": 0.60,  # COUNT, 50 connections, not pipelined, vs bare echo
    "send_per_s": 10000.0,  # SEND, 50 connections, not pipelined
    "idle_kib": 3.0,  # RSS per idle connection
    # The IRC front, 1000 IRC clients saturated, vs ngircd on the same load (issue 12).
    "irc_ngircd_ratio": {"cpython": 0.9, "pypy": 1.5},
}


# Runs measured again because other processes were busy, at most, in one bench.
MAX_RETRIES = 12


def log(*parts):
    print("bench:", *parts, file=sys.stderr, flush=True)


# ---- processes ------------------------------------------------------------


def raise_nofile():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Cores:
    """Which core the server gets and which the generator (and we) get."""

    def __init__(self):
        available = sorted(os.sched_getaffinity(0))
        self.taskset = shutil.which("taskset")
        if len(available) >= 2:
            self.server, self.generator = available[0], available[1]
        else:
            self.server = self.generator = None
        self.note = (
            "server on CPU %s, generator on CPU %s (%s)"
            % (self.server, self.generator, "taskset" if self.taskset else "sched_setaffinity")
            if self.server is not None
            else "one CPU: server and generator share it"
        )

    def wrap(self, command, role):
        core = getattr(self, role)
        if core is None:
            return command
        if self.taskset:
            return [self.taskset, "-c", str(core)] + command
        return command

    def preexec(self, role):
        core = getattr(self, role)

        def pin():
            if core is not None and not self.taskset:
                os.sched_setaffinity(0, {core})

        return pin

    def pin_self(self):
        if self.generator is not None:
            os.sched_setaffinity(0, {self.generator})


def cpu_seconds(pid):
    """utime + stime of a process (all threads), from /proc/<pid>/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


def machine_busy():
    """Busy CPU seconds of the whole machine so far, all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick


class Quiet:
    """
    Waits, before each measurement, until the other processes on the machine
    (a build, a test run) use less than C{threshold} of a core, for at most
    C{limit} seconds each time and C{budget} seconds in all.
    """

    def __init__(self, threshold=0.10, limit=15.0, budget=120.0):
        self.threshold = threshold
        self.limit = limit
        self.budget = budget
        self.waited = 0.0

    def wait(self, pids=()):
        start = time.monotonic()
        limit = min(self.limit, self.budget - self.waited)
        while True:
            ours = sum(cpu_seconds(p) for p in pids)
            busy = machine_busy()
            time.sleep(0.5)
            others = (machine_busy() - busy) - (sum(cpu_seconds(p) for p in pids) - ours)
            if others < self.threshold * 0.5:
                break
            if time.monotonic() - start > limit:
                log("  other processes still use %.0f%% of a core: measuring anyway" % (200 * others))
                break
        self.waited += time.monotonic() - start

    def exhausted(self):
        return self.waited >= self.budget


def wait_idle(pid, limit=30.0, interval=0.3, threshold=0.02):
    """Wait until the process uses under C{threshold} s of CPU per C{interval} s."""
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = cpu_seconds(pid)
        if now - before < threshold:
            return True
        before = now
    log("warning: pid %d still busy after %.0f s" % (pid, limit))
    return False


class Server:
    """A server subprocess whose log tells the ports it listens on."""

    def __init__(self, name, command, directory, cores, ports):
        self.name = name
        self.command = cores.wrap(command, "server")
        self.directory = directory
        self.cores = cores
        self.port_names = ports
        self.ports = {}
        self.process = None
        self.logfile = directory / ("%s.log" % name)

    def start(self, timeout=60.0):
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "wb") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                preexec_fn=self.cores.preexec("server"),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.logfile.read_text(errors="replace")
            found = {}
            for name, pattern in self.port_names.items():
                m = re.search(pattern, text)
                if m:
                    found[name] = int(m.group(1))
            if len(found) == len(self.port_names):
                self.ports = found
                break
            if self.process.poll() is not None:
                raise RuntimeError("%s exited at start:\n%s" % (self.name, text[-3000:]))
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("%s did not listen within %.0f s" % (self.name, timeout))
        wait_idle(self.pid)
        return self

    @property
    def pid(self):
        return self.process.pid

    def stop(self, timeout=20.0):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log("%s did not stop in %.0f s: killing it" % (self.name, timeout))
            self.process.kill()
            self.process.wait(10)


def mailsvc_server(python, directory, cores, db=None, name="mailsvc"):
    """C{db}: a database URL (several nodes on PostgreSQL); an SQLite file in
    C{directory} by default."""
    twistd = Path(python).parent / "twistd"
    local = "tcp:0:interface=127.0.0.1"
    command = [
        str(twistd), "-n", "--pidfile=", "mailsvc",
        "--port", local, "--chat-port", local, "--irc-port", local, "--web-port", local,
        # Fixed ports another run on the machine may hold; the bench does not use them.
        "--smtp-port", "none", "--pop3-port", "none",
        "--db", db or str(directory / "bench.sqlite"),
        "--chat-log", str(directory / "chat.log"),
        # The bench opens thousands of connections from one address, sends
        # faster than anyone types, and fills one mailbox.
        "--max-connections", "19000", "--max-per-peer", "19000",
        "--flood-rate", "1000000000", "--flood-burst", "1000000000",
        "--quota-messages", "1000000000", "--quota-bytes", "1000000000000",
        "--max-sends", "1000000000", "--send-rate", "1000000000",
        "--nick-timeout", "3600", "--idle-timeout", "3600",
        "--shutdown-grace", "0",
    ]  # fmt: skip
    return Server(
        name,
        command,
        directory,
        cores,
        ports={
            "mail": r"front mail listening on .*:(\d+)",
            "chat": r"front chat listening on .*:(\d+)",
            "irc": r"front irc listening on .*:(\d+)",
            "web": r"front web listening on .*:(\d+)",
        },
    )


NGIRCD_CONF = """\
[Global]
Name = bench.invalid
Info = mailsvc bench peer
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = bench
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
# 0: no penalty time, ngircd's flood control, at all.
MaxPenaltyTime = 0
PingTimeout = 3600
PongTimeout = 3600
[Options]
DNS = no
Ident = no
PAM = no
[Channel]
Name = #chat
Modes = +n
"""


def ngircd_server(directory, cores):
    """
    ngircd (Debian's), the IRC server the IRC front is compared with: a
    throwaway configuration on a free loopback port, no DNS, ident or PAM
    lookups, no connection or join limits, no penalty time (its flood
    control); #chat predefined.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # ngircd takes a port number, not 0: one the kernel has just handed out.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = directory / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(port=port))
    # It drops root for nobody: the directory must let it read the file.
    directory.chmod(0o755)
    conf.chmod(0o644)
    server = Server(
        "ngircd",
        [shutil.which("ngircd") or "ngircd", "--nodaemon", "--config", str(conf)],
        directory,
        cores,
        ports={"irc": r"Now listening on \[127\.0\.0\.1\]:(\d+)"},
    )
    # Now and then (1 run in 20 or so) ngircd resets a connection or two while
    # 1000 come at once, soon after the last 1000 went: measured once more.
    server.retry_errors = True
    return server


def cut_log(path, keep=1 << 20):
    """Keep the first C{keep} bytes of a log: ngircd writes a line or two for
    every connection it opens, closes or fails to write to (200 MB a run)."""
    if path.exists() and path.stat().st_size > keep:
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.seek(keep)
            f.write(b"\n[bench: the rest of this log was cut]\n")


def baseline_server(python, directory, cores):
    return Server(
        "baseline",
        [str(python), str(HERE / "baseline.py"), "0", "0"],
        directory,
        cores,
        ports={"mail": r"echo (\d+)", "chat": r"broadcast (\d+)"},
    )


# ---- talking to mailsvc ----------------------------------------------------


def converse(port, requests, timeout=30.0):
    """Send each request (lines joined by LF) and wait for its reply's first line."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rwb")
        for request in requests:
            f.write(request.encode() + b"\n")
            f.flush()
            replies.append(f.readline().decode().rstrip("\r\n"))
    return replies


def prepare_accounts(port):
    """Accounts bench (10 messages, for COUNT) and sink (for SEND); bench's cookie."""
    registered, _ = converse(port, ["REGISTER bench benchpass123", "REGISTER sink sinkpass123"])
    if not registered.startswith("OK "):
        raise RuntimeError("REGISTER failed: %r" % registered)
    cookie = registered.split()[1]
    replies = converse(
        port, ["SEND bench seed %d %s\na message to count\n." % (i, cookie) for i in range(10)]
    )
    if not all(r.startswith("OK ") for r in replies):
        raise RuntimeError("seeding failed: %r" % replies)
    return cookie


# ---- the generator ---------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.cores = Cores()
        # Absolute, not resolved: a venv's python is a symlink out of the venv.
        self.python = Path(os.path.abspath(args.server_python))
        self.impl = subprocess.run(
            [str(self.python), "-c", "import platform; print(platform.python_implementation())"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        self.label = args.label or ("pypy" if self.impl == "PyPy" else "cpython")
        self.rundir = HERE / "build" / ("run-" + self.label)
        self.results = {"runs": []}
        self.quiet = Quiet()
        self.retries = 0
        self._servers = 0
        # The JIT needs longer to warm up than CPython's caches do.
        self.warmup = (0.5 if self.quick else 1.0) * (2 if self.impl == "PyPy" else 1)
        self.duration = 1.0 if self.quick else 3.0

    def loadgen(self, mode, port, server, timeout, **options):
        command = [str(LOADGEN), mode, "--port", str(port), "--server-pid", str(server.pid)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                command.append(flag)
            elif value is not None:
                command += [flag, str(value)]
        command = self.cores.wrap(command, "generator")
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout,
                preexec_fn=self.cores.preexec("generator"),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"error": "loadgen did not finish within %.0f s" % timeout}
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"error": "loadgen said: %s %s" % (done.stdout[-500:], done.stderr[-500:])}
        if done.stderr.strip():
            result.setdefault("stderr", done.stderr.strip()[-500:])
        return result

    def record(self, scenario, server, **fields):
        if "request" in fields:
            fields["request"] = re.sub(r"[A-Za-z0-9_-]{43}", "<cookie>", fields["request"])
        run = dict(scenario=scenario, server=server, **fields)
        self.results["runs"].append(run)
        return run

    def measure(self, scenario, server, mode, port, timeout=None, **options):
        options.setdefault("warmup", self.warmup)
        options.setdefault("duration", self.duration)
        if timeout is None:
            timeout = options["warmup"] + options["duration"] + 240
        result = None
        # A run during which other processes were busy is measured once more
        # (while the quiet budget lasts), and the quieter of the two is kept.
        for attempt in range(2):
            wait_idle(server.pid)
            self.quiet.wait([server.pid])
            again = self.loadgen(mode, port, server, timeout, **options)
            if "error" not in again:
                again["other_cpu_s"] = round(
                    again["machine_busy_s"] - again["server_cpu_s"] - again["gen_cpu_s"], 3
                )
            if result is not None and "error" in result and getattr(server, "retry_errors", False):
                again["retried_after"] = result["error"]
                result = None
            if result is None or (
                "error" not in again and again["other_cpu_s"] < result["other_cpu_s"]
            ):
                result = again
            if "error" in result and attempt == 0 and getattr(server, "retry_errors", False):
                log("  %s on %s: %s; measuring again" % (scenario, server.name, result["error"]))
                continue
            if "error" in result or not noisy(result) or self.quiet.exhausted():
                break
            if self.retries >= MAX_RETRIES:
                break
            self.retries += 1
            log("  %s on %s: other processes were busy; measuring again" % (scenario, server.name))
        result = self.record(scenario, server.name, **dict(options, **result))
        if "error" in result:
            log("  %s on %s: ERROR %s" % (scenario, server.name, result["error"]))
        else:
            lat = result["latency_us"]
            log(
                "  %-28s %-8s %10.0f/s  p50 %7.2f ms  p99 %7.2f ms  server %3.0f%% CPU"
                " %6.2f us/op  generator %3.0f%%  others %3.0f%%%s"
                % (
                    scenario, server.name, result["per_s"], lat["p50"] / 1000,
                    lat["p99"] / 1000, 100 * result["server_cpu_s"] / result["seconds"],
                    result["server_cpu_us_per_op"], 100 * result["gen_cpu_s"] / result["seconds"],
                    100 * result["other_cpu_s"] / result["seconds"],
                    "  errors %d: %s" % (result["errors"], result["first_error"])
                    if result.get("errors") else "",
                )
            )  # fmt: skip
        return result

    # ---- scenarios ----

    def pair(self, scenario, servers, mode, options, reps=1, port=None):
        """
        Measure each server (mailsvc, then the baseline) right after the
        other, C{reps} times: a ratio compares runs made within seconds of
        each other, whatever the machine does over minutes. C{port(server)}:
        the port to load (default: the one named by C{mode}).
        """
        for rep in range(reps):
            for server in servers:
                opts = options(server) if callable(options) else dict(options)
                where = port(server) if port else server.ports[mode]
                run = self.measure(scenario, server, mode, where, **opts)
                run["rep"] = rep

    def irc(self, servers):
        """
        IRC clients against mailsvc's IRC front and ngircd, the same load;
        then a mixed room on mailsvc (every other client on the line chat),
        paired with ngircd's all-IRC room again.
        """
        for clients in (100, 1000):
            reps = 3 if clients == 1000 and not self.quick else 1
            load = dict(conns=clients, senders=10, window=4)
            self.pair(
                "irc saturated %d" % clients, servers, "chat", dict(load, dialect="irc"), reps,
                port=lambda server: server.ports["irc"],
            )  # fmt: skip

            def mixed(server, load=load):
                if server.name == "ngircd":
                    return dict(load, dialect="irc")
                return dict(load, dialect="mixed", irc_port=server.ports["irc"])

            self.pair(
                "irc mixed saturated %d" % clients, servers, "chat", mixed, reps,
                port=lambda server: server.ports["chat" if server.name == "mailsvc" else "irc"],
            )  # fmt: skip

    def chat(self, servers):
        for clients in (100, 1000):
            # The targets are at 1000 clients: their median of three.
            reps = 3 if clients == 1000 and not self.quick else 1
            self.pair(
                "chat saturated %d" % clients, servers, "chat",
                dict(conns=clients, senders=10, window=4), reps,
            )  # fmt: skip
            rates = [10000, 100000] if not self.quick or clients == 1000 else [10000]
            for rate in rates:
                self.pair(
                    "chat %dk/s %d" % (rate // 1000, clients), servers, "chat",
                    dict(conns=clients, senders=10, rate=rate,
                         duration=2.0 if self.quick else 5.0), reps,
                )  # fmt: skip

    def mail(self, servers, cookie):
        if self.quick:
            shapes = [(50, 1), (500, 16)]
        else:
            shapes = [(c, d) for c in (1, 50, 500) for d in (1, 16)]
        for op in ("COUNT", "SEND"):
            for conns, depth in shapes:

                def options(server, op=op, conns=conns, depth=depth):
                    session = cookie if server.name == "mailsvc" else "x" * 43
                    request = {
                        "COUNT": "COUNT %s\\n" % session,
                        "SEND": "SEND sink bench %s\\nA line of body text for the benchmark.\\n.\\n"
                        % session,
                    }[op]
                    # The echo answers every line: one reply line per request line.
                    lines = 1 if server.name == "mailsvc" else request.count("\\n")
                    return dict(conns=conns, depth=depth, request=request, reply_lines=lines)

                # The targets are at 50 connections, not pipelined.
                reps = 3 if (conns, depth) == (50, 1) and not self.quick else 1
                self.pair("%s %d conns depth %d" % (op, conns, depth), servers, "mail", options, reps)

    def idle(self, make_server, kind, conns, cookie=None, join=False):
        """RSS growth per connection, on a fresh server."""
        server = make_server().start()
        try:
            if cookie is None and kind == "mail":
                cookie = (
                    prepare_accounts(server.ports["mail"]) if server.name == "mailsvc" else "x" * 43
                )
            request = "COUNT %s\\n" % cookie if kind == "mail" else None
            time.sleep(0.5)
            wait_idle(server.pid)
            self.quiet.wait([server.pid])
            before = rss_kib(server.pid)
            command = self.cores.wrap(
                [str(LOADGEN), "idle", "--port", str(server.ports[kind]), "--conns", str(conns),
                 "--setup-timeout", "120", "--hold", "300"]
                + (["--request", request] if request else [])
                + (["--join"] if join else ["--greeting"] if kind == "chat" else []),
                "generator",
            )  # fmt: skip
            generator = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                preexec_fn=self.cores.preexec("generator"),
            )  # fmt: skip
            try:
                line = generator.stdout.readline()
                ready = json.loads(line) if line.strip() else {"error": "loadgen exited"}
                if "error" not in ready:
                    time.sleep(0.5)
                    wait_idle(server.pid, limit=120)
                    after = rss_kib(server.pid)
                    ready.update(
                        rss_before_kib=before, rss_after_kib=after,
                        kib_per_conn=(after - before) / conns,
                    )
            finally:
                generator.stdin.close()
                try:
                    generator.wait(60)
                except subprocess.TimeoutExpired:
                    generator.kill()
                    generator.wait()
            name = "idle %s %d%s" % (kind, conns, " joined" if join else "")
            run = self.record(name, server.name, **ready)
            if "error" in run:
                log("  %-28s %-8s ERROR %s" % (name, server.name, run["error"]))
            else:
                log(
                    "  %-28s %-8s %6.2f KiB per connection (RSS %d -> %d KiB)"
                    % (name, server.name, run["kib_per_conn"], before, run["rss_after_kib"])
                )
        finally:
            server.stop()

    def profile(self, server, cookie):
        """py-spy the server under chat and SEND load (CPython only)."""
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if self.impl != "CPython":
            self.results["profiles"] = "skipped: py-spy reads CPython only (%s)" % self.impl
            log("profile: skipped, py-spy reads CPython only")
            return
        if not Path(pyspy).exists():
            self.results["profiles"] = "skipped: py-spy is not installed"
            log("profile: skipped, py-spy is not installed")
            return
        self.results["profiles"] = {}
        loads = {
            "chat": ("chat", server.ports["chat"], dict(conns=1000, senders=10, window=4)),
            "send": ("mail", server.ports["mail"], dict(
                conns=50, depth=1, reply_lines=1,
                request="SEND sink bench %s\\nA line of body text for the benchmark.\\n.\\n"
                % cookie)),
        }  # fmt: skip
        seconds = 8
        for name, (mode, port, options) in loads.items():
            out = self.rundir / ("profile-%s.txt" % name)
            wait_idle(server.pid)
            generator = subprocess.Popen(
                self.cores.wrap(
                    [str(LOADGEN), mode, "--port", str(port), "--server-pid", str(server.pid),
                     "--warmup", "2", "--duration", str(seconds + 2)]
                    + [x for k, v in options.items() for x in ("--" + k.replace("_", "-"), str(v))],
                    "generator",
                ),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                preexec_fn=self.cores.preexec("generator"),
            )  # fmt: skip
            time.sleep(2 + (2 if mode == "chat" else 0.5))
            spy = subprocess.run(
                self.cores.wrap(
                    [pyspy, "record", "--pid", str(server.pid), "--duration", str(seconds),
                     "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)],
                    "generator",
                ),
                capture_output=True, text=True, timeout=seconds + 60,
            )  # fmt: skip
            try:
                generator.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                generator.kill()
                generator.communicate()
            if spy.returncode != 0 or not out.exists():
                self.results["profiles"][name] = "py-spy failed: " + spy.stderr[-400:]
                log("profile %s: py-spy failed: %s" % (name, spy.stderr[-400:]))
                continue
            summary = summarize_profile(out.read_text())
            self.results["profiles"][name] = summary
            log("profile %s: %d samples" % (name, summary["samples"]))
            for row in summary["self"][:8]:
                log("    %5.1f%%  %s" % (row[1], row[0]))

    def directory(self, name):
        """A new directory for each server: a new database, a new chat log."""
        self._servers += 1
        return self.rundir / ("%d-%s" % (self._servers, name))

    def send_floor(self):
        """What one 64-byte send() on loopback costs the kernel here (bench/sendcost.c)."""
        if not SENDCOST.exists():
            return {"error": "%s is missing" % SENDCOST}
        self.quiet.wait()
        try:
            done = subprocess.run([str(SENDCOST)], capture_output=True, text=True, timeout=150)
            floor = json.loads(done.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            return {"error": "sendcost failed"}
        if "error" not in floor:
            log(
                "kernel time per 64-byte loopback send(): %.1f us (%.1f us with two epoll_ctl)"
                % (floor["sys_us"], floor["with_epoll_ctl_sys_us"])
            )
        return floor

    def run(self):
        cores = self.cores
        cores.pin_self()
        files = raise_nofile()
        if self.rundir.exists():
            shutil.rmtree(self.rundir)
        self.rundir.mkdir(parents=True)
        idle_conns = 2000 if self.quick else 10000
        if files < idle_conns + 100:
            idle_conns = files - 100
            log("RLIMIT_NOFILE is %d: idle connections cut to %d" % (files, idle_conns))
        self.results["meta"] = meta(self, files)
        log(
            "%s, %s; %s"
            % (self.results["meta"]["server_python"], self.results["meta"]["twisted"], cores.note)
        )
        self.results["meta"]["kernel_send"] = self.send_floor()
        mailsvc = lambda: mailsvc_server(self.python, self.directory("mailsvc"), cores)  # noqa: E731
        baseline = lambda: baseline_server(self.python, self.directory("baseline"), cores)  # noqa: E731
        started = time.monotonic()

        parts = set(self.args.only.split(",")) if self.args.only else None
        wanted = lambda part: parts is None or part in parts  # noqa: E731

        if wanted("chat"):
            self.chat_part(mailsvc, baseline)
        if wanted("web"):
            self.web_part(mailsvc)
        if wanted("mail"):
            self.mail_part(mailsvc, baseline)
        if wanted("irc"):
            self.irc_part(mailsvc, lambda: ngircd_server(self.directory("ngircd"), cores))
        if wanted("idle"):
            log("idle connections")
            for make in (mailsvc, baseline):
                for kind in ("mail", "chat"):
                    self.idle(make, kind, idle_conns)
                self.idle(make, "chat", 200 if self.quick else 1000, join=True)

        if not self.quick and not self.args.no_profile and wanted("profile"):
            log("profiles")
            server = mailsvc().start()
            try:
                self.profile(server, prepare_accounts(server.ports["mail"]))
            finally:
                server.stop()

        self.results["meta"]["seconds"] = round(time.monotonic() - started, 1)
        self.results["meta"]["waited_for_quiet_s"] = round(self.quiet.waited, 1)
        self.results["meta"]["measured_again"] = self.retries
        return self.results

    def chat_part(self, mailsvc, baseline):
        log("chat fan-out")
        servers = []
        try:
            servers = [mailsvc().start(), baseline().start()]
            self.chat(servers)
        finally:
            for server in servers:
                server.stop()

    def irc_part(self, mailsvc, ngircd):
        if not shutil.which("ngircd"):
            log("IRC fan-out: skipped, ngircd is not installed (Debian: ngircd)")
            self.results["irc"] = "skipped: ngircd is not installed"
            return
        log("IRC fan-out, against ngircd")
        servers = []
        try:
            servers = [mailsvc().start(), ngircd().start()]
            self.irc(servers)
        finally:
            for server in servers:
                server.stop()
            if len(servers) > 1:
                cut_log(servers[1].logfile)

    def web_part(self, mailsvc):
        """
        The same room fan-out to 1000 clients over the web front's WebSocket
        (loadgen --ws) and over the line chat, on one server, one after the
        other (three times each unless quick): their ratio is what JSON in
        WebSocket frames costs beside a text line.
        """
        log("web (WebSocket) chat fan-out beside the line chat")
        server = mailsvc().start()
        try:
            for rep in range(1 if self.quick else 3):
                for scenario, front, ws in (
                    ("line chat saturated 1000, beside web", "chat", None),
                    ("web chat saturated 1000", "web", True),
                ):
                    run = self.measure(
                        scenario, server, "chat", server.ports[front],
                        conns=1000, senders=10, window=4, ws=ws,
                    )  # fmt: skip
                    run["rep"] = rep
        finally:
            server.stop()

    def mail_part(self, mailsvc, baseline):
        log("mail request/response")
        servers = []
        try:
            servers = [mailsvc().start(), baseline().start()]
            self.mail(servers, prepare_accounts(servers[0].ports["mail"]))
        finally:
            for server in servers:
                server.stop()


def summarize_profile(raw, top=25):
    """py-spy's collapsed stacks: the share of samples each function is on top
    of (self) and anywhere in (total), idle samples left out."""
    own, anywhere, samples = {}, {}, 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        count = int(count)
        frames = stack.split(";")
        samples += count
        # Own time to the line; time under a function by function.
        leaf = _frame(frames[-1], line=True)
        own[leaf] = own.get(leaf, 0) + count
        for frame in set(_frame(f) for f in frames):
            anywhere[frame] = anywhere.get(frame, 0) + count

    def table(d):
        rows = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100.0 * n / samples, 1)] for name, n in rows]

    return {"samples": samples, "self": table(own), "total": table(anywhere)}


def _frame(frame, line=False):
    """py-spy's "write (/.../site-packages/twisted/internet/abstract.py:356)" as
    "write (twisted/internet/abstract.py)", or with its ":356" if C{line}."""
    m = re.match(r"(.*) \((.*?)(:\d+)?\)$", frame)
    if not m:
        return frame
    path = re.sub(r"^.*/(site-packages|lib/(python|pypy)[\d.]*)/", "", m.group(2))
    path = path.replace(str(ROOT) + "/", "")
    return "%s (%s%s)" % (m.group(1), path, m.group(3) or "" if line else "")


def meta(bench, files):
    python = bench.python
    probe = subprocess.run(
        [str(python), "-c",
         "import sys, platform, twisted; print(platform.python_implementation(), "
         "platform.python_version(), '|', sys.version.replace(chr(10), ' '), '|', twisted.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    impl_version, version, twisted = [p.strip() for p in probe.split("|")]
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "label": bench.label,
        "implementation": bench.impl,
        "server_python": impl_version,
        "python_version": version,
        "twisted": "Twisted " + twisted,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "cores": bench.cores.note,
        "nofile": files,
        "quick": bench.quick,
        "warmup_s": bench.warmup,
        "duration_s": bench.duration,
    }


# ---- the table ---------------------------------------------------------------


def repetitions(results, scenario, server="mailsvc"):
    return [r for r in results["runs"] if r["scenario"] == scenario and r["server"] == server]


def key(run):
    """What a repeated run is ranked by: p99 at a fixed rate, else the rate (or RSS)."""
    if run.get("offered_per_s"):
        return run["latency_us"]["p99"]
    return run["per_s"] if "per_s" in run else run["kib_per_conn"]


def find(results, scenario, server="mailsvc"):
    """The run of a scenario, or the median of its repetitions."""
    runs = repetitions(results, scenario, server)
    good = [r for r in runs if ok(r)]
    if not good:
        return runs[0] if runs else None
    return sorted(good, key=key)[len(good) // 2]


def spread(results, scenario, server="mailsvc"):
    """", 3 runs: 1.0–2.0" for a repeated scenario (p99 ms or rate), else ""."""
    good = [r for r in repetitions(results, scenario, server) if ok(r)]
    if len(good) < 2:
        return ""
    values = sorted(key(r) for r in good)
    if good[0].get("offered_per_s"):
        return "%d runs, p99 %.1f–%.1f ms" % (len(values), values[0] / 1000, values[-1] / 1000)
    return "%d runs, %s–%s/s" % (len(values), "{:,.0f}".format(values[0]), "{:,.0f}".format(values[-1]))


def peer(scenario):
    """The server a scenario compares mailsvc with: ngircd for IRC, else bare Twisted."""
    return "ngircd" if scenario.startswith("irc") else "baseline"


def pair_ratios(results, scenario):
    """mailsvc's rate over its peer's, repetition by repetition (each pair
    measured within seconds), sorted."""
    mine = {r.get("rep", 0): r for r in repetitions(results, scenario) if ok(r)}
    base = {r.get("rep", 0): r for r in repetitions(results, scenario, peer(scenario)) if ok(r)}
    return sorted(ratio(mine[k]["per_s"], base[k]["per_s"]) for k in mine if k in base)


def ratio_check(results, scenario):
    """(median of the pair ratios, "3 pairs, 0.75–0.81"), or (None, "")."""
    values = pair_ratios(results, scenario)
    if not values:
        return None, ""
    how = "%d pairs, %.2f–%.2f" % (len(values), values[0], values[-1]) if len(values) > 1 else ""
    return values[len(values) // 2], how


def scenarios(results, server="mailsvc"):
    """The scenarios measured, in order, each once."""
    seen = []
    for run in results["runs"]:
        if run["server"] == server and run["scenario"] not in seen:
            seen.append(run["scenario"])
    return seen


def ok(run):
    return run is not None and "error" not in run


def ratio(a, b):
    return a / b if b else float("nan")


def noisy(run):
    """A run during which other processes took more than 15% of a core."""
    return ok(run) and run.get("other_cpu_s", 0) > 0.15 * run.get("seconds", 1)


def rows(results):
    """(section, name, mailsvc, baseline, ratio, detail) for the table."""
    out = []
    for name in scenarios(results):
        run, base = find(results, name), find(results, name, peer(name))
        if "error" in run:
            out.append((name, "ERROR: " + run["error"], "", "", ""))
            continue
        if name.startswith("idle"):
            mine = "%.2f KiB/conn" % run["kib_per_conn"]
            theirs = "%.2f KiB/conn" % base["kib_per_conn"] if ok(base) else "-"
            r = "%.2f" % ratio(run["kib_per_conn"], base["kib_per_conn"]) if ok(base) else "-"
            out.append((name, mine, theirs, r, "RSS %d -> %d KiB" % (
                run["rss_before_kib"], run["rss_after_kib"])))
            continue
        lat = run["latency_us"]
        unit = "deliveries/s" if run["mode"] == "chat" else "ops/s"
        mine = "%.0f %s" % (run["per_s"], unit)
        theirs = "%.0f" % base["per_s"] if ok(base) else "-"
        r = "%.2f" % ratio(run["per_s"], base["per_s"]) if ok(base) else "-"
        detail = "p50 %.2f p99 %.2f max %.1f ms; server %.0f%% CPU, %.2f us/op (base %s); gen %.0f%%" % (
            lat["p50"] / 1000, lat["p99"] / 1000, lat["max"] / 1000,
            100 * run["server_cpu_s"] / run["seconds"], run["server_cpu_us_per_op"],
            "%.2f" % base["server_cpu_us_per_op"] if ok(base) else "-",
            100 * run["gen_cpu_s"] / run["seconds"],
        )  # fmt: skip
        if ok(base):
            detail += "; base p99 %.2f ms" % (base["latency_us"]["p99"] / 1000)
        if spread(results, name):
            detail += "; median of %s" % spread(results, name)
        if peer(name) != "baseline":
            detail += "; compared with %s" % peer(name)
        if run.get("errors"):
            detail += "; %d errors: %s" % (run["errors"], run["first_error"])
        if noisy(run) or noisy(base):
            detail += "; NOISY (other processes busy)"
        out.append((name, mine, theirs, r, detail))
    return out


def interpreter(meta):
    """"cpython" or "pypy": what the targets and the plot are chosen by (not the label)."""
    return "pypy" if meta.get("implementation") == "PyPy" else "cpython"


def targets(results):
    impl = interpreter(results["meta"])
    checks = []

    def check(name, measured, target, met, unit, scenario=None, how=None, cpython_only=True):
        if how is None:
            how = spread(results, scenario) if scenario else ""
        if cpython_only and impl != "cpython":
            met = None  # the issue sets this target for CPython only
        checks.append({"target": name, "measured": measured, "goal": target, "met": met,
                       "unit": unit, "spread": how})

    r, how = ratio_check(results, "chat saturated 1000")
    if r is not None:
        check("chat 1000 clients saturated vs bare broadcast", round(r, 3),
              TARGETS["chat_saturated_ratio"], r >= TARGETS["chat_saturated_ratio"], "ratio",
              how=how)
    saturated = find(results, "chat saturated 1000")
    if impl == "pypy" and ok(saturated):
        rate = saturated["per_s"]
        check("chat 1000 clients saturated (PyPy)", round(rate), TARGETS["pypy_saturated_per_s"],
              rate >= TARGETS["pypy_saturated_per_s"], "deliveries/s", "chat saturated 1000",
              cpython_only=False)
    fast = find(results, "chat 100k/s 1000")
    goal = TARGETS["chat_p99_ms"]["pypy" if impl == "pypy" else "cpython"]
    if ok(fast):
        p99 = fast["latency_us"]["p99"] / 1000
        sustained = fast["per_s"] >= 0.95 * fast["offered_per_s"]
        check("chat p99 at 100k deliveries/s, 1000 clients", round(p99, 2), goal,
              p99 <= goal and sustained, "ms", "chat 100k/s 1000", cpython_only=False)
    slow = sorted(
        r["server_cpu_us_per_op"] for r in repetitions(results, "chat 10k/s 1000") if ok(r)
    )
    if slow:
        us = slow[len(slow) // 2]
        goal = TARGETS["chat_cpu_us"]["pypy" if impl == "pypy" else "cpython"]
        check("server CPU per unbatched delivery (10k/s, 1000 clients)", round(us, 2),
              goal, us <= goal, "us",
              how="%d runs, %.1f–%.1f us" % (len(slow), slow[0], slow[-1]) if len(slow) > 1 else "",
              cpython_only=False)
    r, how = ratio_check(results, "COUNT 50 conns depth 1")
    if r is not None:
        check("COUNT, 50 connections, not pipelined, vs bare echo", round(r, 3),
              TARGETS["count_ratio"], r >= TARGETS["count_ratio"], "ratio", how=how,
              cpython_only=False)
    send = find(results, "SEND 50 conns depth 1")
    if ok(send):
        check("durable SEND, 50 connections, not pipelined", round(send["per_s"]),
              TARGETS["send_per_s"], send["per_s"] >= TARGETS["send_per_s"] and not send["errors"],
              "acknowledged/s", "SEND 50 conns depth 1")
    r, how = ratio_check(results, "irc saturated 1000")
    if r is not None:
        goal = TARGETS["irc_ngircd_ratio"][impl]
        check("IRC front, 1000 IRC clients saturated, vs ngircd", round(r, 3), goal, r >= goal,
              "ratio", how=how, cpython_only=False)
    for kind in ("mail", "chat"):
        for run in results["runs"]:
            if (run["server"] == "mailsvc" and run["scenario"].startswith("idle %s" % kind)
                    and "joined" not in run["scenario"] and ok(run)):
                check("%s: RSS per idle connection (%d)" % (kind, run["conns"]),
                      round(run["kib_per_conn"], 2), TARGETS["idle_kib"],
                      run["kib_per_conn"] <= TARGETS["idle_kib"], "KiB")
    return checks


def figure(value):
    """3036483 as 3,036,483; 12.0 as 12; 0.834 as it is."""
    return "{:,.0f}".format(value) if value >= 1000 else "{:g}".format(value)


VERDICT = {True: "met", False: "NOT REACHED", None: "(CPython target)"}


def print_table(results, out=sys.stdout):
    m = results["meta"]
    print("\nmailsvc bench: %s, %s, %s" % (m["server_python"], m["twisted"], m["date"]), file=out)
    print("%s, %d CPUs; %s%s" % (m["cpu"], m["cpus"], m["cores"], "; QUICK run" if m["quick"] else ""), file=out)
    floor = m.get("kernel_send") or {}
    if "sys_us" in floor:
        print("kernel time per 64-byte loopback send(): %.1f us, %.1f us with two epoll_ctl"
              % (floor["sys_us"], floor["with_epoll_ctl_sys_us"]), file=out)
    print(file=out)
    table = rows(results)
    w = max(len(r[0]) for r in table) if table else 10
    print("%-*s  %-24s %-16s %-6s %s" % (w, "scenario", "mailsvc", "bare Twisted", "ratio", "detail"), file=out)
    for name, mine, theirs, r, detail in table:
        print("%-*s  %-24s %-16s %-6s %s" % (w, name, mine, theirs, r, detail), file=out)
    print("\ntargets:", file=out)
    for c in results.get("targets", []):
        print("  %-58s measured %-10s goal %-8s %-12s %s" % (
            c["target"], "%s %s" % (figure(c["measured"]), c["unit"] if c["unit"] != "ratio" else ""),
            figure(c["goal"]), VERDICT[c["met"]],
            "(%s)" % c["spread"] if c.get("spread") else ""), file=out)
    profiles = results.get("profiles")
    if isinstance(profiles, str):
        print("\nprofiles: " + profiles, file=out)


# Frames every sample passes through: twistd's start-up, the reactor's loop, a thread's start.
BOOTSTRAP = re.compile(
    r"twisted/(application|scripts)/|^<module>|ReactorBase\.(run|mainLoop)|threading\.py"
    r"|twisted/python/(log|context)\.py"
)


def markdown(results, out=sys.stdout):
    """The tables of docs/performance.md, from a results file."""
    m = results["meta"]
    w = lambda line: print(line, file=out)  # noqa: E731
    w("%s, %s; %s, %d CPUs; %s; %s; commit %s%s." % (
        m["server_python"], m["twisted"], m["cpu"], m["cpus"], m["cores"], m["date"],
        m["commit"], "; quick run" if m["quick"] else ""))  # fmt: skip
    floor = m.get("kernel_send") or {}
    if "sys_us" in floor:
        w("")
        w("Kernel time per 64-byte `send()` on loopback (bench/sendcost.c): %.1f µs;"
          " %.1f µs with the two `epoll_ctl()` around it." % (
              floor["sys_us"], floor["with_epoll_ctl_sys_us"]))  # fmt: skip
    w("")
    w("| Scenario | mailsvc | bare Twisted | ratio | mailsvc p50 / p99 / max (ms) | bare p99 (ms) "
      "| server CPU | server µs/op (bare) | generator CPU |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in scenarios(results):
        run, base = find(results, name), find(results, name, peer(name))
        if name.startswith("idle"):
            continue
        if not ok(run):
            w("| %s | error: %s | | | | | | | |" % (run["scenario"], run["error"]))
            continue
        lat = run["latency_us"]
        unit = "/s"
        w("| %s%s%s%s | %s%s | %s | %s | %.2f / %.2f / %.1f | %s | %.0f%% | %.2f (%s) | %.0f%% |" % (
            run["scenario"], " *" if noisy(run) or noisy(base) else "",
            " (vs %s)" % peer(name) if peer(name) != "baseline" else "",
            " (median of %s)" % spread(results, name) if spread(results, name) else "",
            "{:,.0f}".format(run["per_s"]), unit,
            "{:,.0f}".format(base["per_s"]) if ok(base) else "-",
            "%.2f" % ratio(run["per_s"], base["per_s"]) if ok(base) else "-",
            lat["p50"] / 1000, lat["p99"] / 1000, lat["max"] / 1000,
            "%.2f" % (base["latency_us"]["p99"] / 1000) if ok(base) else "-",
            100 * run["server_cpu_s"] / run["seconds"], run["server_cpu_us_per_op"],
            "%.2f" % base["server_cpu_us_per_op"] if ok(base) else "-",
            100 * run["gen_cpu_s"] / run["seconds"],
        ))  # fmt: skip
    w("")
    w("| Idle connections | mailsvc KiB/conn | bare Twisted KiB/conn | ratio | mailsvc RSS before → after |")
    w("|---|---:|---:|---:|---:|")
    for name in scenarios(results):
        run, base = find(results, name), find(results, name, "baseline")
        if not name.startswith("idle"):
            continue
        if not ok(run):
            w("| %s | error: %s | | | |" % (run["scenario"], run["error"]))
            continue
        w("| %s | %.2f | %s | %s | %s → %s KiB |" % (
            run["scenario"][5:], run["kib_per_conn"],
            "%.2f" % base["kib_per_conn"] if ok(base) else "-",
            "%.2f" % ratio(run["kib_per_conn"], base["kib_per_conn"]) if ok(base) else "-",
            "{:,}".format(run["rss_before_kib"]), "{:,}".format(run["rss_after_kib"]),
        ))  # fmt: skip
    w("")
    w("| Target | measured | goal | | mailsvc runs |")
    w("|---|---:|---:|---|---|")
    for c in results.get("targets", []):
        unit = "" if c["unit"] == "ratio" else " " + c["unit"]
        w("| %s | %s%s | %s%s | %s | %s |" % (
            c["target"], figure(c["measured"]), unit, figure(c["goal"]), unit,
            VERDICT[c["met"]].replace("NOT REACHED", "**not reached**"),
            c.get("spread", "")))  # fmt: skip
    profiles = results.get("profiles")
    if isinstance(profiles, dict):
        for name, summary in profiles.items():
            if isinstance(summary, str):
                w("\nProfile %s: %s" % (name, summary))
                continue
            w("")
            w("Profile under the %s load: %d samples; share of samples a function is on top"
              " of the stack (self) and anywhere in it (total)." % (name, summary["samples"]))
            w("")
            w("| self | function | | total | function |")
            w("|---:|---|---|---:|---|")
            totals = [t for t in summary["total"] if not BOOTSTRAP.search(t[0])]
            for i in range(12):
                a = summary["self"][i] if i < len(summary["self"]) else None
                b = totals[i] if i < len(totals) else None
                w("| %s | %s | | %s | %s |" % (
                    "%s%%" % a[1] if a else "", "`%s`" % a[0] if a else "",
                    "%s%%" % b[1] if b else "", "`%s`" % b[0] if b else ""))  # fmt: skip
    elif profiles:
        w("")
        w("Profiles: %s." % profiles)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-python", default=sys.executable,
                        help="the interpreter of the virtualenv whose twistd is measured")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--label", help="name of the results (default: cpython or pypy)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--only", metavar="PARTS",
                        help="comma-separated parts to run: chat, web, mail, irc, idle, profile"
                        " (default: all)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--table", metavar="JSON", help="only print the table of a results file")
    parser.add_argument("--markdown", metavar="JSON", help="only print a results file as Markdown")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return 0
    if args.markdown:
        markdown(json.loads(Path(args.markdown).read_text()))
        return 0
    if not LOADGEN.exists():
        log("%s is missing: run make bench (it compiles bench/loadgen.c)" % LOADGEN)
        return 2
    bench = Bench(args)
    results = bench.run()
    results["targets"] = targets(results)
    name = bench.label + ("-quick" if args.quick else "")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / (name + ".json")
    path.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    log("results written to %s" % path.relative_to(ROOT))
    if not args.no_plot:
        try:
            import plot
        except ImportError as e:
            log("no plot: %s" % e)
        else:
            png = plot.plot(path)
            log("plot written to %s" % png.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())

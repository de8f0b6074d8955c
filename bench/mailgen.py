"""
The load generator of the mail clients' bench (bench/mailclients.py): one
process, one thread, asyncio protocols, C connections each with one request
outstanding (SMTP and POP3 as mailsvc offers them: no pipelining).

    python bench/mailgen.py smtp PORT --connections 50 --user U --password P --to R --size 1024
    python bench/mailgen.py pop3 PORT --connections 50 --user U --password P --messages 100

Every connection logs in first, two at a time (not measured); then a warm-up, then the
measuring window. SMTP: MAIL FROM, RCPT TO, DATA, the message, "." answered
250 is one submission. POP3: RETR of message 1, 2, ... N, 1, ... read to its
final "." is one retrieval. Prints one JSON object: completed per second in
the window, latency percentiles, the CPU seconds of the server's processes
(--server-pids, with their children), of this generator and of every other
process on the machine over the window.
Bounded: each phase has a deadline, and the whole process an alarm.
"""

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import sys
import time


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def family(pids):
    """The pids and every descendant of them (Dovecot forks one process a session)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_of(pids):
    total = 0.0
    for pid in family(pids):
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            pass
    return total


def machine_busy():
    """Busy CPU seconds of the whole machine so far, all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def own_cpu():
    t = os.times()
    return t.user + t.system


class Conversation(asyncio.Protocol):
    """One connection: a script of (request, is-the-reply-complete) steps."""

    def __init__(self, stats):
        self.stats = stats
        self.buffer = bytearray()
        self.waiter = None
        self.done = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        if self.waiter is not None and self.done(self.buffer):
            waiter, self.waiter = self.waiter, None
            reply = bytes(self.buffer)
            self.buffer.clear()
            waiter.set_result(reply)

    def connection_lost(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost: %r" % (exc,)))

    async def ask(self, data, done):
        """Send C{data} (None: nothing) and wait for a reply C{done} says is whole."""
        self.done = done
        self.waiter = asyncio.get_running_loop().create_future()
        if self.buffer and done(self.buffer):
            self.data_received(b"")
        if data is not None:
            self.transport.write(data)
        return await self.waiter


def line(buffer):
    return buffer.endswith(b"\r\n")


def smtp_reply(buffer):
    # The last line of a reply has a space after its code.
    if not buffer.endswith(b"\r\n"):
        return False
    start = buffer.rfind(b"\r\n", 0, len(buffer) - 2)
    last = buffer[0 if start < 0 else start + 2 :]
    return len(last) >= 4 and last[3:4] == b" "


def multiline(buffer):
    return buffer.endswith(b"\r\n.\r\n") or buffer.startswith(b"-ERR") and line(buffer)


def expect(reply, prefix):
    if not reply.startswith(prefix):
        raise RuntimeError("unexpected reply %r" % (reply[:200],))


def message(args, n):
    head = (
        "From: {user}@{domain}\r\nTo: {to}\r\nSubject: bench {n}\r\n"
        "Message-ID: <bench.{n}@{domain}>\r\n\r\n"
    ).format(user=args.user, domain=args.domain, to=args.to, n=n)
    body = ("x" * 70 + "\r\n") * max(1, (args.size - len(head)) // 72)
    return (head + body).encode("ascii")


async def smtp_session(args, stats, state):
    loop = asyncio.get_running_loop()
    _, c = await loop.create_connection(lambda: Conversation(stats), "127.0.0.1", args.port)
    expect(await c.ask(None, smtp_reply), b"220")
    expect(await c.ask(b"EHLO bench\r\n", smtp_reply), b"250")
    token = base64.b64encode(b"\0%s\0%s" % (args.user.encode(), args.password.encode()))
    async with state["logins"]:
        expect(await c.ask(b"AUTH PLAIN " + token + b"\r\n", smtp_reply), b"235")
    state["ready"] += 1
    await state["go"].wait()
    data = message(args, 0).replace(b"\r\n.", b"\r\n..") + b".\r\n"
    sender = b"MAIL FROM:<%s@%s>\r\n" % (args.user.encode(), args.domain.encode())
    recipient = b"RCPT TO:<%s>\r\n" % (args.to.encode(),)
    while not state["stop"]:
        start = time.perf_counter()
        expect(await c.ask(sender, smtp_reply), b"250")
        expect(await c.ask(recipient, smtp_reply), b"250")
        expect(await c.ask(b"DATA\r\n", smtp_reply), b"354")
        expect(await c.ask(data, smtp_reply), b"250")
        if state["measuring"]:
            stats.append(time.perf_counter() - start)
    c.transport.abort()


async def pop3_session(args, stats, state):
    loop = asyncio.get_running_loop()
    _, c = await loop.create_connection(lambda: Conversation(stats), "127.0.0.1", args.port)
    expect(await c.ask(None, line), b"+OK")
    expect(await c.ask(b"USER %s\r\n" % args.user.encode(), line), b"+OK")
    async with state["logins"]:
        expect(await c.ask(b"PASS %s\r\n" % args.password.encode(), line), b"+OK")
    state["ready"] += 1
    await state["go"].wait()
    n = random.randrange(args.messages)
    while not state["stop"]:
        start = time.perf_counter()
        reply = await c.ask(b"RETR %d\r\n" % (n + 1,), multiline)
        expect(reply, b"+OK")
        state["octets"] += len(reply)
        n = (n + 1) % args.messages
        if state["measuring"]:
            stats.append(time.perf_counter() - start)
    c.transport.abort()


async def run(args):
    stats = []
    state = {"ready": 0, "go": asyncio.Event(), "stop": False, "measuring": False, "octets": 0,
             # mailsvc takes at most 3 password checks at once for one name
             # (the login throttle): log in two at a time.
             "logins": asyncio.Semaphore(2)}
    session = smtp_session if args.mode == "smtp" else pop3_session
    tasks = [asyncio.ensure_future(session(args, stats, state)) for _ in range(args.connections)]
    deadline = time.monotonic() + args.login_timeout
    while state["ready"] < args.connections:
        failed = [t for t in tasks if t.done()]
        if failed:
            failed[0].result()
        if time.monotonic() > deadline:
            raise RuntimeError("only %d connections logged in" % state["ready"])
        await asyncio.sleep(0.05)
    state["go"].set()
    await asyncio.sleep(args.warmup)
    pids = args.server_pids
    server0, own0, wall0 = cpu_of(pids), own_cpu(), time.perf_counter()
    machine0 = machine_busy()
    state["measuring"] = True
    # For a profiler started alongside: the window begins now.
    print("measuring", file=sys.stderr, flush=True)
    octets0 = state["octets"]
    await asyncio.sleep(args.seconds)
    state["measuring"] = False
    wall = time.perf_counter() - wall0
    server1, own1, machine1 = cpu_of(pids), own_cpu(), machine_busy()
    octets = state["octets"] - octets0
    state["stop"] = True
    done, pending = await asyncio.wait(tasks, timeout=10)
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception() is not None:
            raise t.exception()
    latencies = sorted(stats)

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    return {
        "mode": args.mode,
        "connections": args.connections,
        "completed": len(latencies),
        "per_s": round(len(latencies) / wall, 1),
        "mb_per_s": round(octets / wall / 1e6, 2),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "server_cpu": round((server1 - server0) / wall, 3),
        "generator_cpu": round((own1 - own0) / wall, 3),
        # What the rest of the machine used meanwhile (the machine is shared).
        "others_cpu": round(
            ((machine1 - machine0) - (server1 - server0) - (own1 - own0)) / wall, 3
        ),
        "window_s": round(wall, 3),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["smtp", "pop3"])
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--to", default="sink@localhost")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--login-timeout", type=float, default=60.0)
    parser.add_argument("--server-pids", type=int, nargs="*", default=[])
    args = parser.parse_args()
    signal.alarm(int(args.login_timeout + args.warmup + args.seconds + 30))
    print(json.dumps(asyncio.run(run(args))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

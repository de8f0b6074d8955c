"""
The mail clients' bench: SMTP submissions/s and POP3 RETR/s at 50
connections on mailsvc, with POP3 measured beside Dovecot's POP3 server
(Debian's dovecot-pop3d) on the same number and size of messages, in the
same run. See docs/performance.md ("SMTP and POP3") and bench/REPORT.md.

    python bench/mailclients.py --server-python .venv/bin/python [--quick]

mailsvc (twistd -n mailsvc) and Dovecot (dovecot -F, a throwaway config in
build/mailclients/dovecot: a loopback port the kernel picked, a passwd-file
passdb, a maildir) are pinned to one core; the generator (bench/mailgen.py,
its own process) to the other. Each POP3 measurement on mailsvc is followed
at once by the same on Dovecot; the ratio of each pair is reported, and the
median of the pairs. Every generator run has a timeout, and every server is
stopped at the end (killed if it does not stop).
"""

import argparse
import json
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Cores, Quiet, Server, converse, log, raise_nofile, wait_idle  # noqa: E402

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build" / "mailclients"
RESULTS = HERE / "results"
MAILGEN = HERE / "mailgen.py"

CONNECTIONS = 50
PASSWORD = "benchpass123"


def mailsvc_server(python, directory, cores):
    twistd = Path(os.path.abspath(python)).parent / "twistd"
    local = "tcp:0:interface=127.0.0.1"
    command = [
        str(twistd), "-n", "--pidfile=", "mailsvc",
        "--port", local, "--chat-port", "none", "--irc-port", "none", "--web-port", "none",
        "--smtp-port", local, "--pop3-port", local,
        "--db", str(directory / "bench.sqlite"),
        # 50 connections from one address, sending as fast as they can into one mailbox.
        "--max-connections", "1000", "--max-per-peer", "1000",
        "--max-sends", "1000000000", "--send-rate", "1000000000",
        "--quota-messages", "1000000000", "--quota-bytes", "1000000000000",
        "--idle-timeout", "3600", "--shutdown-grace", "0",
    ]  # fmt: skip
    return Server(
        "mailsvc", command, directory, cores,
        ports={
            "mail": r"front mail listening on .*:(\d+)",
            "smtp": r"front smtp listening on .*:(\d+)",
            "pop3": r"front pop3 listening on .*:(\d+)",
        },
    )  # fmt: skip


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DOVECOT_CONF = """\
# A throwaway Dovecot: POP3 only, on loopback, users from a passwd-file.
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = {uid}
mail_location = maildir:{dir}/home/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
protocol pop3 {{
  # The bench's 50 sessions share one user and one address.
  mail_max_userip_connections = 1000
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


class Dovecot(Server):
    """Dovecot in the foreground with its own config; its port is chosen here."""

    def __init__(self, directory, cores, messages, user):
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        nobody = 65534
        conf = directory / "dovecot.conf"
        conf.write_text(
            DOVECOT_CONF.format(dir=directory, port=self.port, uid=nobody, gid=nobody)
        )
        (directory / "passwd").write_text("%s:{PLAIN}%s\n" % (user, PASSWORD))
        maildir = directory / "home" / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(messages):
            # A maildir keeps LF line ends; Dovecot sends CRLF, the same bytes as mailsvc.
            (maildir / "cur" / ("%d.bench%d.localhost:2,S" % (1700000000 + i, i))).write_bytes(
                data.replace(b"\r\n", b"\n")
            )
        for path in [directory / "home"] + list((directory / "home").rglob("*")):
            os.chown(path, nobody, nobody)
        super().__init__(
            "dovecot", [shutil.which("dovecot") or "/usr/sbin/dovecot", "-F", "-c", str(conf)],
            directory, cores, ports={},
        )  # fmt: skip

    def start(self, timeout=30.0):
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    if s.recv(100).startswith(b"+OK"):
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dovecot did not answer:\n" + self.logfile.read_text()[-3000:])
            time.sleep(0.1)
        self.ports = {"pop3": self.port}
        return self


def bench_messages(count, size):
    """C{count} RFC 5322 messages of C{size} octets (CRLF), all different."""
    messages = []
    for i in range(count):
        head = (
            "From: sink@localhost\r\nTo: bench@localhost\r\nSubject: message %d\r\n"
            "Message-ID: <%d.bench@localhost>\r\n\r\n" % (i, i)
        ).encode()
        body = b""
        while len(head) + len(body) + 72 <= size:
            body += b"%-70d\r\n" % (i,)
        body += b"x" * (size - len(head) - len(body) - 2) + b"\r\n"
        messages.append(head + body)
    return messages


def fill_mailsvc(server, messages):
    for reply in converse(
        server.ports["mail"], ["REGISTER bench " + PASSWORD, "REGISTER sink " + PASSWORD]
    ):
        if not reply.startswith("OK "):
            raise RuntimeError("REGISTER failed: %r" % (reply,))
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.login("sink", PASSWORD)
        for data in messages:
            s.sendmail("sink@localhost", ["bench@localhost"], data)


def generate(cores, mode, port, pids, args, **options):
    command = [
        sys.executable, str(MAILGEN), mode, str(port),
        "--connections", str(CONNECTIONS), "--password", PASSWORD,
        "--warmup", str(args.warmup), "--seconds", str(args.seconds),
        "--server-pids", *[str(p) for p in pids],
    ]  # fmt: skip
    for name, value in options.items():
        command += ["--" + name.replace("_", "-"), str(value)]
    done = subprocess.run(
        cores.wrap(command, "generator"),
        capture_output=True, text=True, timeout=args.warmup + args.seconds + 120,
        preexec_fn=cores.preexec("generator"),
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError("mailgen %s failed:\n%s" % (mode, done.stderr[-3000:]))
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument("--quick", action="store_true", help="one pair, short windows")
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--size", type=int, default=2048, help="octets a message")
    args = parser.parse_args()
    args.repeat = 1 if args.quick else 3
    args.warmup = 1.0
    args.seconds = 2.0 if args.quick else 3.0
    if shutil.which("dovecot") is None:
        sys.exit("dovecot is not installed: apt-get install dovecot-pop3d")
    raise_nofile()
    cores = Cores()
    quiet = Quiet()
    shutil.rmtree(BUILD, ignore_errors=True)
    messages = bench_messages(args.messages, args.size)
    mailsvc = mailsvc_server(args.server_python, BUILD / "mailsvc", cores)
    dovecot = Dovecot(BUILD / "dovecot", cores, messages, "bench")
    results = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cores": cores.note,
            "connections": CONNECTIONS,
            "messages": args.messages,
            "size": args.size,
            "server_python": args.server_python,
            "dovecot": subprocess.run(["dovecot", "--version"], capture_output=True,
                                      text=True).stdout.strip(),
        },
        "runs": [],
    }  # fmt: skip
    try:
        mailsvc.start()
        fill_mailsvc(mailsvc, messages)
        dovecot.start()
        wait_idle(mailsvc.pid)
        for i in range(args.repeat):
            quiet.wait([mailsvc.pid])
            ours = generate(cores, "pop3", mailsvc.ports["pop3"], [mailsvc.pid], args,
                            user="bench", messages=args.messages)  # fmt: skip
            theirs = generate(cores, "pop3", dovecot.port, [dovecot.pid], args,
                              user="bench", messages=args.messages)  # fmt: skip
            log("pop3 RETR/s: mailsvc %(per_s)s (server CPU %(server_cpu)s, generator %(generator_cpu)s, others %(others_cpu)s)" % ours)
            log("pop3 RETR/s: dovecot %(per_s)s (server CPU %(server_cpu)s, generator %(generator_cpu)s, others %(others_cpu)s)" % theirs)
            results["runs"] += [dict(ours, server="mailsvc"), dict(theirs, server="dovecot")]
        for i in range(args.repeat):
            quiet.wait([mailsvc.pid])
            sent = generate(cores, "smtp", mailsvc.ports["smtp"], [mailsvc.pid], args,
                            user="sink", to="bench@localhost", size=args.size)  # fmt: skip
            log("smtp submissions/s: mailsvc %(per_s)s (server CPU %(server_cpu)s, generator %(generator_cpu)s, others %(others_cpu)s)" % sent)
            results["runs"].append(dict(sent, server="mailsvc"))
    finally:
        mailsvc.stop()
        dovecot.stop()
    pairs = [
        a["per_s"] / b["per_s"]
        for a, b in zip(results["runs"][0 : 2 * args.repeat : 2], results["runs"][1 : 2 * args.repeat : 2])
    ]
    results["pop3_ratio"] = {
        "median": round(statistics.median(pairs), 3),
        "pairs": [round(p, 3) for p in pairs],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("mailclients%s.json" % ("-quick" if args.quick else ""))
    out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    log("wrote %s" % out)


def print_table(results):
    print("%-8s %-8s %10s %8s %8s %10s %10s %10s" % (
        "front", "server", "per s", "p50 ms", "p99 ms", "server CPU", "gen CPU", "others"))
    for run in results["runs"]:
        print("%-8s %-8s %10.0f %8.2f %8.2f %10.2f %10.2f %10.2f" % (
            run["mode"], run["server"], run["per_s"], run["p50_ms"], run["p99_ms"],
            run["server_cpu"], run["generator_cpu"], run.get("others_cpu", 0)))
    print("POP3 RETR/s, mailsvc / Dovecot: median %(median)s, pairs %(pairs)s" % results["pop3_ratio"])


if __name__ == "__main__":
    main()

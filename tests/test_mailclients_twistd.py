"""
End to end: C{twistd -n mailsvc} with TLS configured, spoken to by the
standard library's smtplib and poplib (clients no one here wrote), the mail
port and the chat port, across fronts: SMTP in, POP3 and the mail port out;
SEND and a chat C{/msg} in, POP3 out; POP3 deletions seen on the mail port.

Plain synchronous tests (no reactor in this process). One server for the
module, with accounts of the tests' own; its log is printed at the end, and
any error it logged fails the last test's teardown.
"""

import email
import email.policy
import os
import poplib
import re
import smtplib
import ssl
import subprocess
import sys
from email.message import EmailMessage

import pytest

from certs import self_signed
from conftest import require
from mailsvc.testing.process import TwistdServer

pytestmark = pytest.mark.e2e

TIMEOUT = 10
PASSWORDS = {name: "pw of " + name for name in ("alice", "bob", "carol", "dave", "erin")}


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, identity):
    server = TwistdServer(
        tmp_path_factory.mktemp("twistd"),
        extra=["--tls-cert", identity.cert, "--tls-key", identity.key],
    )
    try:
        server.start()
        with server.connect() as mail:
            for name, password in PASSWORDS.items():
                assert mail("REGISTER %s %s" % (name, password))[0].startswith("OK ")
        yield server
        server.stop()
        assert server.problems() == []
    finally:
        server.close()


def mail_session(server, name):
    """A mail port connection logged in as C{name}."""
    mail = server.connect()
    assert mail("LOGIN %s %s" % (name, PASSWORDS[name]))[0].startswith("OK ")
    return mail


def listed(server, name):
    """C{name}'s LIST on the mail port: (id, sender, subject) a message."""
    with mail_session(server, name) as mail:
        reply = mail("LIST")
    assert reply[0] == "OK %d messages" % (len(reply) - 2,) and reply[-1] == "."
    rows = [re.fullmatch(r"(\d+) (\S+) \S+ (.*)", line) for line in reply[1:-1]]
    return [(int(m[1]), m[2], m[3]) for m in rows]


def pop3(server, name, context=None):
    """A poplib session logged in as C{name} (after STLS if C{context})."""
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=TIMEOUT)
    if context is not None:
        p.stls(context)
    p.user(name)
    p.pass_(PASSWORDS[name])
    return p


def retrieve(p, number):
    """Message C{number} as poplib gives it, its lines joined with CRLF again."""
    return b"".join(line + b"\r\n" for line in p.retr(number)[1])


def fetch_all(server, name):
    p = pop3(server, name)
    try:
        count, _ = p.stat()
        return [retrieve(p, i + 1) for i in range(count)]
    finally:
        p.quit()


def verifying(identity):
    context = ssl.create_default_context(cafile=str(identity.cert))
    context.check_hostname = True
    return context


def composed(sender, to, subject, text):
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, to, subject
    m.set_content(text)
    return m


def test_smtplib_to_two_accounts_fetched_byte_for_byte_and_listed(server):
    m = composed(
        "alice@localhost", "bob@localhost, Carol@LOCALHOST", "Grüße aus Köln ☃",
        "first line\n.a line with a dot\n\nthird line, ünïcode\n",
    )  # fmt: skip
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=TIMEOUT) as s:
        s.ehlo("test")
        assert "pipelining" not in s.esmtp_features
        assert {"auth", "size", "enhancedstatuscodes", "8bitmime", "starttls"} <= set(
            s.esmtp_features
        )
        assert "CRAM-MD5" not in s.esmtp_features["auth"]
        s.login("alice", PASSWORDS["alice"])
        assert s.send_message(m) == {}
    sent = m.as_bytes(policy=email.policy.SMTP)
    for name in ("bob", "carol"):
        assert fetch_all(server, name)[-1] == sent  # byte for byte
        assert listed(server, name)[-1][1:] == ("alice", "Grüße aus Köln ☃")
    with mail_session(server, "carol") as mail:
        message_id = listed(server, "carol")[-1][0]
        read = mail("READ %d" % message_id)
    assert "third line, ünïcode" in read


def test_send_on_the_mail_port_parses_as_rfc_5322(server):
    with mail_session(server, "bob") as mail:
        mail.send("SEND dave Ça va? ☀\nline one\n\n..dotted\n.\n")
        [reply] = mail.reply()
    assert re.fullmatch(r"OK \d+", reply)
    message_id = int(reply[3:])
    p = pop3(server, "dave")
    try:
        uidls = [line.split()[1] for line in p.uidl()[1]]
        number = uidls.index(b"%d" % message_id) + 1
        raw = retrieve(p, number)
    finally:
        p.quit()
    assert re.search(rb"^Subject: =\?utf-8\?", raw, re.M)  # RFC 2047: not ASCII
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.defects == []
    assert parsed["From"] == "bob@localhost" and parsed["To"] == "dave@localhost"
    assert parsed["Subject"] == "Ça va? ☀"
    assert parsed["Date"].datetime is not None
    assert parsed["Message-ID"] == "<%d.mailsvc@localhost>" % message_id
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    # Lines end in CRLF on the wire, as RFC 5322 has them.
    assert parsed.get_content() == "line one\r\n\r\n.dotted\r\n"


def test_starttls_with_smtplib_and_stls_with_poplib(server, identity):
    context = verifying(identity)
    m = composed("erin@localhost", "erin@localhost", "over TLS", "secret\n")
    with smtplib.SMTP("localhost", server.ports["smtp"], timeout=TIMEOUT) as s:
        s.starttls(context=context)
        s.ehlo("test")
        # RFC 3207: a new session, which no longer offers STARTTLS.
        assert "starttls" not in s.esmtp_features and "auth" in s.esmtp_features
        s.login("erin", PASSWORDS["erin"])
        assert s.send_message(m) == {}
    p = poplib.POP3("localhost", server.ports["pop3"], timeout=TIMEOUT)
    try:
        assert "STLS" in p.capa()
        p.stls(context)
        assert "STLS" not in p.capa()
        p.user("erin")
        p.pass_(PASSWORDS["erin"])
        count, _ = p.stat()
        assert retrieve(p, count) == m.as_bytes(policy=email.policy.SMTP)
    finally:
        p.quit()
    # A client that does not trust the certificate stops at the handshake.
    with smtplib.SMTP("localhost", server.ports["smtp"], timeout=TIMEOUT) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            s.starttls(context=ssl.create_default_context())


def test_a_chat_msg_to_an_offline_account_is_fetched_by_poplib(server):
    chat = server.connect_chat()
    try:
        assert chat.line() == "HELLO"
        chat.send("NICK alice %s\n" % (PASSWORDS["alice"],))
        assert chat.line() == "READY"
        chat.send("/msg dave meet me\n")
        lines = [chat.line()]
        while not lines[-1].startswith("* dave"):
            lines.append(chat.line())
        assert lines[-1] == "* dave is not here: your message is in their mailbox"
    finally:
        chat.close()
    parsed = email.message_from_bytes(fetch_all(server, "dave")[-1], policy=email.policy.default)
    assert parsed["Subject"] == "Chat message from alice"
    assert parsed["From"] == "alice@localhost" and parsed.get_content() == "meet me\r\n"


def test_dele_and_quit_deletes_and_a_session_without_quit_deletes_nothing(server):
    with mail_session(server, "alice") as mail:
        for subject in ("keep", "drop"):
            mail.send("SEND erin %s\nbody\n.\n" % (subject,))
            assert mail.reply()[0].startswith("OK ")
    before = listed(server, "erin")
    keep, drop = before[-2][0], before[-1][0]
    # DELE, then the connection ends without QUIT: nothing is deleted.
    p = pop3(server, "erin")
    count, _ = p.stat()
    p.dele(count)
    p.close()
    assert listed(server, "erin") == before
    # DELE and QUIT: gone from LIST.
    p = pop3(server, "erin")
    count, _ = p.stat()
    assert p.uidl(count).split()[-1] == b"%d" % drop
    p.dele(count)
    assert p.quit().startswith(b"+OK")
    after = listed(server, "erin")
    assert [row[0] for row in after] == [row[0] for row in before[:-1]]
    assert after[-1][0] == keep


def test_a_message_deleted_on_the_mail_port_meanwhile_answers_err(server):
    with mail_session(server, "carol") as mail:
        mail.send("SEND carol short-lived\nbody\n.\n")
        [reply] = mail.reply()
        message_id = int(reply[3:])
        p = pop3(server, "carol")
        try:
            count, _ = p.stat()
            assert mail("DELETE %d" % message_id) == ["OK deleted 1"]
            with pytest.raises(poplib.error_proto, match="deleted meanwhile"):
                p.retr(count)
            assert p.noop().startswith(b"+OK")
        finally:
            p.quit()


# Debian's clients: swaks (SMTP AUTH and STARTTLS) and fetchmail (POP3).


def swaks(server, identity, *args):
    command = [
        require("swaks", "swaks"), "--server", "localhost", "--port", str(server.ports["smtp"]),
        "--timeout", str(TIMEOUT), *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT * 3)
    if "requires Net::SSLeay" in done.stderr:
        require("swaks-has-no-tls", "libnet-ssleay-perl")
    return done


def test_swaks_auth_plain_over_starttls_and_auth_login(server, identity):
    done = swaks(
        server, identity,
        "--from", "alice@localhost", "--to", "bob@localhost,carol@localhost",
        "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", PASSWORDS["alice"],
        "--tls", "--tls-verify", "--tls-ca-path", str(identity.cert),
        "--header", "Subject: from swaks over TLS", "--body", "hello from swaks",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<-  220 2.0.0 ready to start TLS" in done.stdout and "=== TLS started" in done.stdout
    assert re.search(r"<~  235 2\.7\.0 ", done.stdout)  # AUTH after STARTTLS
    done = swaks(
        server, identity,
        "--from", "dave@localhost", "--to", "bob@localhost",
        "--auth", "LOGIN", "--auth-user", "dave", "--auth-password", PASSWORDS["dave"],
        "--header", "Subject: from swaks, plain", "--body", "loopback",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    subjects = [row[1:] for row in listed(server, "bob")]
    assert ("alice", "from swaks over TLS") in subjects and ("dave", "from swaks, plain") in subjects
    assert ("alice", "from swaks over TLS") in [row[1:] for row in listed(server, "carol")]
    # A wrong password is refused (swaks exits 28 when AUTH fails).
    done = swaks(
        server, identity, "--from", "dave@localhost", "--to", "bob@localhost",
        "--auth", "PLAIN", "--auth-user", "dave", "--auth-password", "wrong",
    )  # fmt: skip
    assert done.returncode == 28 and "535 5.7.8" in done.stdout, done.stdout
    # Sending as someone else: 553.
    done = swaks(
        server, identity, "--from", "alice@localhost", "--to", "bob@localhost",
        "--auth", "PLAIN", "--auth-user", "dave", "--auth-password", PASSWORDS["dave"],
    )  # fmt: skip
    assert done.returncode != 0 and "553 5.7.1" in done.stdout, done.stdout


MDA = """\
import os, sys, uuid
with open(os.path.join(sys.argv[1], uuid.uuid4().hex), "wb") as f:
    f.write(sys.stdin.buffer.read())
"""


def fetchmail(server, identity, directory, name, keep):
    """Run fetchmail once for C{name} over STLS; fire with the messages its mda wrote."""
    directory.mkdir(exist_ok=True)
    delivered = directory / "delivered"
    delivered.mkdir(exist_ok=True)
    mda = directory / "mda.py"
    mda.write_text(MDA)
    rcfile = directory / "fetchmailrc"
    rcfile.write_text(
        'poll localhost with proto POP3 port %d uidl\n'
        '  user "%s" there with password "%s" is "%s" here\n'
        '  %s\n'
        '  sslproto "TLS1.2+" sslcertck sslcertfile "%s"\n'
        '  mda "%s %s %s"\n'
        % (server.ports["pop3"], name, PASSWORDS[name], name,
           "keep" if keep else "nokeep fetchall",
           identity.cert, sys.executable, mda, delivered)
    )  # fmt: skip
    rcfile.chmod(0o600)  # fetchmail refuses an rcfile others may read
    before = set(os.listdir(delivered))
    done = subprocess.run(
        [require("fetchmail", "fetchmail"), "-f", str(rcfile), "-i", str(directory / "ids"),
         "--pidfile", str(directory / "pid"), "--nosyslog", "--nodetach", "-v"],
        capture_output=True, text=True, timeout=TIMEOUT * 3,
        env=dict(os.environ, HOME=str(directory)),
    )  # fmt: skip
    fetched = [
        email.message_from_bytes((delivered / f).read_bytes(), policy=email.policy.default)
        for f in sorted(set(os.listdir(delivered)) - before, key=lambda f: (delivered / f).stat().st_mtime_ns)
    ]
    return done, fetched


def test_fetchmail_keep_then_nokeep_over_stls(server, identity, tmp_path):
    with mail_session(server, "carol") as mail:
        for subject in ("for fetchmail one", "for fetchmail two ☃"):
            mail.send("SEND erin %s\nline 1\nline 2\n.\n" % (subject,))
            assert mail.reply()[0].startswith("OK ")
    waiting = listed(server, "erin")
    # keep: every message is fetched, none is deleted.
    done, fetched = fetchmail(server, identity, tmp_path, "erin", keep=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STLS" in done.stderr or "STLS" in done.stdout
    assert len(fetched) == len(waiting)
    assert [m["Subject"] for m in fetched][-2:] == ["for fetchmail one", "for fetchmail two ☃"]
    assert fetched[-1]["From"] == "carol@localhost"
    assert fetched[-1].get_content().replace("\r\n", "\n") == "line 1\nline 2\n"
    assert listed(server, "erin") == waiting
    # nokeep: fetched again (fetchall), then deleted at QUIT.
    done, fetched = fetchmail(server, identity, tmp_path, "erin", keep=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(fetched) == len(waiting)
    assert listed(server, "erin") == []

"""smtplib and poplib, real clients no one here wrote, against a running mailsvc."""

import email
import email.policy
import poplib
import smtplib
from email.message import EmailMessage

import pytest_twisted
from twisted.internet.threads import deferToThread

from conftest import within
from mailsvc.testing import start_server


def send(port, user, password, message):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("test")
        assert "pipelining" not in s.esmtp_features
        s.login(user, password)
        return s.send_message(message)


def fetch_all(port, user, password, delete=False):
    p = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        p.user(user)
        p.pass_(password)
        count, _ = p.stat()
        messages = [b"\r\n".join(p.retr(i + 1)[1]) + b"\r\n" for i in range(count)]
        if delete:
            for i in range(count):
                p.dele(i + 1)
        p.quit()
        return messages
    except BaseException:
        p.close()
        raise


@pytest_twisted.ensureDeferred
async def test_smtplib_to_two_accounts_fetched_by_poplib_and_listed():
    server = await within(start_server())
    try:
        for name in ("alice", "bob", "carol"):
            await within(server.add_user(name, "pw-" + name))
        m = EmailMessage()
        m["From"] = "alice@localhost"
        m["To"] = "bob@localhost, carol@localhost"
        m["Subject"] = "Grüße aus Köln"
        m.set_content("first line\n.a dot line\nthird line ünïcode\n")
        refused = await within(deferToThread(send, server.port("smtp"), "alice", "pw-alice", m))
        assert refused == {}
        sent = m.as_bytes(policy=email.policy.SMTP)
        for name in ("bob", "carol"):
            [got] = await within(
                deferToThread(fetch_all, server.port("pop3"), name, "pw-" + name)
            )
            assert got == sent  # byte for byte
        client = await within(server.connect_mail(user="bob", password="pw-bob"))
        [listed] = await within(client.list())
        assert (listed.sender, listed.subject) == ("alice", "Grüße aus Köln")
        [stored] = await within(server.mailbox("carol"))
        assert stored.body == "first line\n.a dot line\nthird line ünïcode"
    finally:
        await within(server.stop())


@pytest_twisted.ensureDeferred
async def test_send_fetched_by_poplib_parses_and_dele_quit_removes_it():
    server = await within(start_server())
    try:
        for name in ("alice", "bob"):
            await within(server.add_user(name, "pw-" + name))
        await within(server.deliver("bob", "alice", "Ça va?", "line 1\nline 2"))
        [got] = await within(
            deferToThread(fetch_all, server.port("pop3"), "bob", "pw-bob", True)
        )
        parsed = email.message_from_bytes(got, policy=email.policy.default)
        assert parsed["Subject"] == "Ça va?"
        assert parsed["From"] == "alice@localhost" and parsed["To"] == "bob@localhost"
        assert parsed.get_content().replace("\r\n", "\n") == "line 1\nline 2\n"
        assert await within(server.mailbox("bob")) == []
    finally:
        await within(server.stop())

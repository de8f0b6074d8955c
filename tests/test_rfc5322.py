"""Rendering a mail-port message as RFC 5322, and reading an SMTP one for the mail port."""

import email
import email.policy

from mailsvc.core.rfc5322 import render, summarize
from mailsvc.store import Message


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.default)


def test_a_line_message_renders_as_rfc_5322():
    data = render(Message(7, "alice", 1700000000.0, "Grüße", "one\n.two\nthree"), "bob", "example.org")
    assert b"\r\n\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    head = data.split(b"\r\n\r\n")[0]
    assert head.isascii()
    assert b"Subject: =?utf-8?" in head  # RFC 2047
    m = parse(data)
    assert m["From"] == "alice@example.org"
    assert m["To"] == "bob@example.org"
    assert m["Subject"] == "Grüße"
    assert m["Message-ID"] == "<7.mailsvc@example.org>"
    assert m["MIME-Version"] == "1.0"
    assert m["Date"].datetime.timestamp() == 1700000000
    assert m.get_content_type() == "text/plain" and m.get_content_charset() == "utf-8"
    assert m.get_content().replace("\r\n", "\n") == "one\n.two\nthree\n"


def test_overlong_lines_are_quoted_printable():
    body = "é" * 2000
    m = parse(render(Message(1, "a", 0.0, "s", body), "b", "d"))
    assert m["Content-Transfer-Encoding"] == "quoted-printable"
    assert m.get_content().rstrip() == body


def test_a_source_is_rendered_as_it_is():
    raw = b"Subject: x\r\n\r\nbody\r\n"
    assert render(Message(1, "a", 0.0, "x", "body", raw), "b", "d") is raw


def test_summary_of_a_multipart_message():
    raw = (
        b"From: a@d\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nn=C3=A9 here\r\nline 2\r\n"
        b"--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n"
        b"--b--\r\n"
    )
    assert summarize(raw) == ("café", "né here\nline 2\n\n[1 part left out: image/png]")


def test_summary_without_a_text_part_and_of_garbage():
    raw = b"Subject: pic\r\nContent-Type: image/png\r\n\r\nAAAA\r\n"
    assert summarize(raw) == ("pic", "[1 part left out: image/png]")
    subject, text = summarize(b"\xff\xfe no headers at all")
    assert subject == "" and "no headers at all" in text

"""
Messages as RFC 5322 sees them: L{render} writes a message sent on the mail
port or the chat (a sender, a subject, a text) as a well-formed message for
POP3; L{summarize} reads an RFC 5322 source that came by SMTP for what the
mail port shows of it (its subject and its text/plain part, decoded).
"""

import email
import email.policy
import quopri
from email.header import Header
from email.utils import formatdate

from mailsvc.core.names import NAME

# RFC 5322's longest line, without its CRLF.
MAX_LINE = 998


def address(name, domain):
    """An account's address: C{<name>@<domain>}."""
    return "%s@%s" % (name, domain)


def message_id(message_id, domain):
    return "<%d.mailsvc@%s>" % (message_id, domain)


def _header(name, value):
    """One header line, RFC 2047-encoded when C{value} is not ASCII."""
    if value.isascii() and "\n" not in value and "\r" not in value:
        return ("%s: %s" % (name, value)).encode("ascii")
    encoded = Header(value.replace("\r", " ").replace("\n", " "), "utf-8", header_name=name)
    return ("%s: %s" % (name, encoded.encode(linesep="\r\n"))).encode("ascii")


def _sender(sender, domain):
    if NAME.match(sender):
        return address(sender, domain)
    # Not an account name: shown as a name, with no address of its own.
    shown = sender.replace("\\", "\\\\").replace('"', '\\"')
    return '"%s" <%s>' % (shown, address("nobody", domain))


def render(message, recipient, domain):
    """
    The RFC 5322 bytes (CRLF line ends) of C{message} (a
    L{mailsvc.store.Message}) in C{recipient}'s mailbox: its own source if it
    came by SMTP, else a text/plain message in UTF-8 made of its fields.
    """
    if message.raw is not None:
        return message.raw
    lines = message.body.split("\n") if message.body else []
    encoded = [line.encode("utf-8") for line in lines]
    if all(len(line) <= MAX_LINE for line in encoded):
        body = b"".join(line + b"\r\n" for line in encoded)
        transfer = "7bit" if body.isascii() else "8bit"
    else:
        body = quopri.encodestring("\n".join(lines).encode("utf-8") + b"\n")
        body = body.replace(b"\n", b"\r\n")
        transfer = "quoted-printable"
    headers = [
        _header("From", _sender(message.sender, domain)),
        _header("To", address(recipient, domain)),
        _header("Subject", message.subject),
        b"Date: " + formatdate(message.date, usegmt=True).encode("ascii"),
        b"Message-ID: " + message_id(message.id, domain).encode("ascii"),
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: " + transfer.encode("ascii"),
    ]
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


def summarize(raw):
    """
    C{(subject, text)} of an RFC 5322 source: the subject decoded, the
    text/plain part decoded (line ends as LF), and a last line saying which
    parts were left out, if any. Never raises for a malformed message.
    """
    try:
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        subject = str(parsed.get("subject", "") or "")
    except Exception:
        return "", raw.decode("utf-8", "replace").replace("\r\n", "\n")
    subject = " ".join(subject.split())
    try:
        body = parsed.get_body(preferencelist=("plain",))
    except Exception:
        body = None
    text = ""
    if body is not None:
        try:
            text = body.get_content()
        except Exception:
            payload = body.get_payload(decode=True) or b""
            text = payload.decode("utf-8", "replace")
    text = text.replace("\r\n", "\n").rstrip("\n")
    if parsed.is_multipart():
        left = [part.get_content_type() for part in parsed.walk()
                if not part.is_multipart() and part is not body]
    else:
        left = [] if body is not None else [parsed.get_content_type()]
    if left:
        note = "[%d part%s left out: %s]" % (
            len(left), "" if len(left) == 1 else "s", ", ".join(left))
        text = text + "\n\n" + note if text else note
    return subject, text

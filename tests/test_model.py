"""
A model-based test of the mail port: random sequences of requests from several
connections, each checked as it runs against a small in-memory model of what
docs/protocol.md promises (accounts, sessions and their staged texts,
mailboxes), over the wire protocol on StringTransport, against the real
service on a synchronous in-memory database, with small quotas and a session
lifetime so that both are reached.

MAILSVC_FUZZ_EXAMPLES sets how many sequences run (default 50).
"""

import os
import re
import string
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailsvc.fronts.mail import MailFactory
from mailsvc.core.passwords import Passwords
from mailsvc.core.names import COOKIE
from mailsvc.core.service import SharedService
from mailsvc.store import Quotas
from mailsvc.store.sqlite import SQLiteStorage
from wire import Wire

# Hypothesis caches what it learns even without an example database: not in
# the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / ("mailsvc-hypothesis-%d" % os.getuid()))

EXAMPLES = int(os.environ.get("MAILSVC_FUZZ_EXAMPLES") or 50)

# Small, so that runs reach them.
QUOTAS = Quotas(messages=4, bytes=120, staged=2)
# Seconds a session may go unused.
TTL = 3600

# The connections, one per user of the service (a label: any of them may log
# in as anyone).
CONNECTIONS = ["alice", "bob", "carol"]
PASSWORDS = {"alice": "wonderland", "bob": "builder", "carol": "two words", "dave": "d"}
# Names to register: the same account in other cases is taken.
REGISTER_NAMES = st.sampled_from(["alice", "bob", "carol", "dave", "Alice", "BOB", "Carol"])
# Never registered: a LOGIN fails, a STORE or SEND to it finds no such user.
NOBODY = "nobody"
FAKE_COOKIE = "x" * 43

TEXT = st.text(
    string.ascii_letters + string.digits + " .#!-\u00e9\u00fc\u6f22", min_size=1, max_size=16
).map(str.strip)
SUBJECT = TEXT | st.just("")
BODY = st.lists(
    st.sampled_from([".", "..", ".x", "", "#" + "0" * 40, "line", "grüß dich"]) | TEXT,
    max_size=4,
)


def date(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass
class Message:
    id: int  # None until the mail port tells it (STORE does not)
    sender: str
    date: str
    subject: str
    body: str

    def header(self):
        return "%d %s %s %s" % (self.id, self.sender, self.date, self.subject)

    def lines(self):
        """A GETMSG or READ reply, as docs/protocol.md (Message format) describes it."""
        content = [
            "Id: %d" % (self.id,),
            "From: " + self.sender,
            "Date: " + self.date,
            "Subject: " + self.subject,
            "",
        ] + self.body.split("\n")
        stuffed = ["." + line if line.startswith(".") else line for line in content]
        return ["OK message %d" % (self.id,)] + stuffed + ["."]


class PeerWire(Wire):
    """A L{Wire} from an address of its own (login failures are counted by address)."""

    def __init__(self, factory, host):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 50000))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)


class MailModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.service = SharedService(
            SQLiteStorage.inline(quotas=QUOTAS), Passwords.inline(), self.clock, session_ttl=TTL
        )
        self.service.startService()
        factory = MailFactory(self.service, clock=self.clock)
        self.wires = {
            name: Wire(factory, port=50000 + i) for i, name in enumerate(CONNECTIONS)
        }
        # A session per account that no rule uses, to check the mailboxes
        # after every step; from an address no failed login is counted against.
        self.observer = PeerWire(factory, "10.0.0.2")
        self.observing = {}  # account -> the observer's cookie

        self.accounts = {}  # name folded to lower case -> name as registered
        self.sessions = {}  # cookie -> account
        self.last_used = {}  # cookie -> when its session was last used
        self.staged = {}  # cookie -> staged texts, the most recent last
        self.bound = dict.fromkeys(CONNECTIONS)  # connection -> its session's cookie
        self.cookies = []  # every cookie a rule was given, logged out or not
        self.mailboxes = {}  # account -> [Message], oldest first
        self.deleted = set()  # ids of deleted messages
        self.last_id = 0  # the highest message id seen
        self.failed_logins = 0

    def teardown(self):
        self.service.stopService()

    # Helpers

    def request(self, connection, line, cookie=None):
        if cookie is not None:
            line += " " + cookie
        return self.wires[connection](line)

    def cookie(self, data, connection):
        """The session a request names: its connection's, or a cookie it ends with."""
        explicit = data.draw(
            st.none() | st.sampled_from(self.cookies + [FAKE_COOKIE]), label="cookie"
        )
        return explicit, (explicit if explicit is not None else self.bound[connection])

    def use(self, cookie):
        """
        A request that needs a session and reaches the service: why it is
        refused (C{"none"}, C{"unknown"}, C{"expired"}), or None if it runs,
        which counts as a use of the session.
        """
        if cookie is None:
            return "none"
        if cookie not in self.sessions:
            return "unknown"
        now = self.clock.seconds()
        if now - self.last_used[cookie] > TTL:
            self.end(cookie)
            return "expired"
        self.last_used[cookie] = now
        return None

    def end(self, cookie):
        del self.sessions[cookie], self.last_used[cookie], self.staged[cookie]

    def refused(self, reply, why):
        """C{reply} is the refusal of a request whose session is missing for C{why}."""
        if why == "none":
            assert reply == ["KO you should log in first"]
        elif why == "unknown":
            assert reply == ["KO unknown or expired session"]
        else:
            # The server may already have forgotten it (it expires sessions
            # every minute), or notice now that it is too old.
            [line] = reply
            assert line.startswith("KO ") and "expired" in line, reply

    def new_id(self, message_id):
        # Ids grow with every delivery (LIST and GETMSG go oldest first, by
        # id), so an id is never used twice.
        assert message_id > self.last_id, (message_id, self.last_id)
        self.last_id = message_id

    def fits(self, recipient, subject, body):
        """Whether a message fits in the mailbox of C{recipient} (a name in any case)."""
        mailbox = self.mailboxes[self.accounts[recipient.lower()]]
        size = sum(len((m.subject + m.body).encode("utf-8")) for m in mailbox)
        return (
            len(mailbox) < QUOTAS.messages
            and size + len((subject + body).encode("utf-8")) <= QUOTAS.bytes
        )

    def deliver(self, recipient, sender, subject, body, message_id=None):
        if message_id is not None:
            self.new_id(message_id)
        mailbox = self.mailboxes[self.accounts[recipient.lower()]]
        mailbox.append(Message(message_id, sender, date(self.clock.seconds()), subject, body))

    def recipient(self, data):
        names = sorted(self.accounts.values()) + [NOBODY]
        name = data.draw(st.sampled_from(names), label="recipient")
        return data.draw(st.sampled_from([name, name.upper(), name.lower()]), label="case")

    def message_id(self, data, cookie):
        """An id: in the mailbox of C{cookie}'s session, in another, deleted, or never used."""
        account = self.sessions.get(cookie)
        own = [m.id for m in self.mailboxes.get(account, [])]
        others = [
            m.id for name, box in self.mailboxes.items() if name != account for m in box
        ]
        choices = own + others + sorted(self.deleted) + [0, self.last_id + 1]
        return data.draw(st.sampled_from(choices), label="id")

    # Accounts and sessions

    @initialize(
        mail=st.lists(
            st.tuples(st.sampled_from(CONNECTIONS), st.sampled_from(CONNECTIONS)),
            max_size=QUOTAS.messages,
        )
    )
    def users(self, mail):
        """Each connection registers its user; some mail is sent between them."""
        for connection in CONNECTIONS:
            self.register(connection, connection)
        for sender, recipient in mail:
            if not self.fits(recipient, "hello", "body"):
                continue
            reply = self.wires[sender].feed("SEND %s hello\r\nbody\r\n.\r\n" % (recipient,))
            [line] = reply
            assert re.fullmatch(r"OK \d+", line), reply
            self.use(self.bound[sender])
            self.deliver(recipient, sender, "hello", "body", int(line[3:]))

    @rule(connection=st.sampled_from(CONNECTIONS), name=REGISTER_NAMES)
    def register(self, connection, name):
        reply = self.request(connection, "REGISTER %s %s" % (name, PASSWORDS[name.lower()]))
        if name.lower() in self.accounts:
            assert reply == ["KO user name already taken"]
            return
        [line] = reply
        cookie = line[3:]
        assert line.startswith("OK ") and COOKIE.match(cookie), reply
        assert cookie not in self.cookies
        self.accounts[name.lower()] = name
        self.mailboxes[name] = []
        self.open(connection, cookie, name)
        [line] = self.observer("LOGIN %s %s" % (name.upper(), PASSWORDS[name.lower()]))
        assert line.startswith("OK ") and COOKIE.match(line[3:]), line
        self.observing[name] = line[3:]

    def open(self, connection, cookie, account):
        self.sessions[cookie] = account
        self.last_used[cookie] = self.clock.seconds()
        self.staged[cookie] = []
        self.bound[connection] = cookie
        self.cookies.append(cookie)

    @rule(connection=st.sampled_from(CONNECTIONS), right=st.booleans(), data=st.data())
    def login(self, connection, right, data):
        # Only names of accounts, or one never registered: failed logins of a
        # name lock it out for a while, and the observer must log in to new ones.
        name = data.draw(st.sampled_from(sorted(self.accounts.values()) + [NOBODY]))
        name = data.draw(st.sampled_from([name, name.upper(), name.lower()]))
        password = PASSWORDS.get(name.lower(), "x") if right else "wrong password"
        reply = self.request(connection, "LOGIN %s %s" % (name, password))
        account = self.accounts.get(name.lower())
        if account is None or not right:
            self.failed_logins += 1
            # After failures a name or an address is locked out for a while,
            # with a KO of its own.
            [line] = reply
            assert line.startswith("KO "), reply
            return
        [line] = reply
        if line.startswith("KO ") and self.failed_logins:
            # Locked out by earlier failures: nothing changes.
            return
        cookie = line[3:]
        assert line.startswith("OK ") and COOKIE.match(cookie), reply
        assert cookie not in self.cookies
        self.open(connection, cookie, account)

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    def logout(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        reply = self.request(connection, data.draw(st.sampled_from(["LOGOUT", "LOGOFF"])), explicit)
        if cookie is None:
            assert reply == ["KO you are not logged in"]
        elif cookie not in self.sessions:
            assert reply == ["KO unknown or expired session"]
        else:
            if self.clock.seconds() - self.last_used[cookie] > TTL:
                # Expired: the server may have forgotten it already.
                assert reply in (["OK"], ["KO unknown or expired session"]), reply
            else:
                assert reply == ["OK"]
            self.end(cookie)
            # Only a LOGOUT that succeeds unbinds the connection.
            if reply == ["OK"] and self.bound[connection] == cookie:
                self.bound[connection] = None

    @rule(seconds=st.integers(0, 120) | st.integers(TTL // 2, TTL - 1))
    def tick(self, seconds):
        # Never more than the session lifetime at once: the observer's
        # sessions, used after every step, must not expire.
        self.clock.advance(seconds)

    # Staging

    @rule(connection=st.sampled_from(CONNECTIONS), text=TEXT, data=st.data())
    def message(self, connection, text, data):
        explicit, cookie = self.cookie(data, connection)
        reply = self.request(connection, "MESSAGE " + text, explicit)
        if not text:
            assert reply == ["KO usage: MESSAGE <text> [<cookie>]"]
        elif self.use(cookie):
            assert reply == ["You should log in first."]
        elif len(self.staged[cookie]) >= QUOTAS.staged:
            [line] = reply
            assert line.startswith("KO too many staged"), reply
        else:
            assert reply == ["OK"]
            self.staged[cookie].append(text)

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    def store(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        recipient = self.recipient(data)
        reply = self.request(connection, "STORE " + recipient, explicit)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
        elif not self.staged[cookie]:
            assert reply == ["KO no staged message: send MESSAGE <text> first"]
        elif recipient.lower() not in self.accounts:
            assert reply == ["KO no such user: " + recipient]
        elif not self.fits(recipient, "", self.staged[cookie][-1]):
            # The text stays staged.
            [line] = reply
            assert line.startswith("KO mailbox of ") and " is full" in line, reply
        else:
            assert reply == ["OK"]
            text = self.staged[cookie].pop()
            # Its id is learnt from the LIST in the check after this step.
            self.deliver(recipient, self.sessions[cookie], "", text)

    # Mailboxes

    @rule(
        connection=st.sampled_from(CONNECTIONS), subject=SUBJECT, body=BODY, data=st.data()
    )
    def send(self, connection, subject, body, data):
        explicit, cookie = self.cookie(data, connection)
        recipient = self.recipient(data)
        header = "SEND %s %s" % (recipient, subject)
        if explicit is not None:
            header += " " + explicit
        lines = [header] + ["." + line if line.startswith(".") else line for line in body]
        reply = self.wires[connection].feed("".join(line + "\r\n" for line in lines + ["."]))
        body = "\n".join(body)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
        elif recipient.lower() not in self.accounts:
            assert reply == ["KO no such user: " + recipient]
        elif not self.fits(recipient, subject, body):
            [line] = reply
            assert line.startswith("KO mailbox of ") and " is full" in line, reply
        else:
            [line] = reply
            assert re.fullmatch(r"OK \d+", line), reply
            self.deliver(recipient, self.sessions[cookie], subject, body, int(line[3:]))

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    def count(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        reply = self.request(connection, "COUNT", explicit)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
        else:
            assert reply == ["COUNTED %d" % len(self.mailboxes[self.sessions[cookie]])]

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    def getmsg(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        reply = self.request(connection, "GETMSG", explicit)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
        elif not self.mailboxes[self.sessions[cookie]]:
            assert reply == ["KO mailbox is empty"]
        else:
            assert reply == self.mailboxes[self.sessions[cookie]][0].lines()

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    def delmsg(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        reply = self.request(connection, "DELMSG", explicit)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
        elif not self.mailboxes[self.sessions[cookie]]:
            assert reply == ["KO mailbox is empty"]
        else:
            assert reply == ["OK"]
            self.deleted.add(self.mailboxes[self.sessions[cookie]].pop(0).id)

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    def list_mailbox(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        sender = data.draw(
            st.none() | st.sampled_from(sorted(self.accounts.values()) + [NOBODY]).map(str.upper)
        )
        line = "LIST" if sender is None else "LIST FROM " + sender
        reply = self.request(connection, line, explicit)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
            return
        messages = [
            m
            for m in self.mailboxes[self.sessions[cookie]]
            if sender is None or m.sender.lower() == sender.lower()
        ]
        assert reply == self.listing(messages)

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    @precondition(lambda self: self.last_id)
    def read(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        message_id = self.message_id(data, cookie)
        reply = self.request(connection, "READ %d" % (message_id,), explicit)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
            return
        # Nobody reads another's mail: the same reply as for no message at all.
        mailbox = self.mailboxes[self.sessions[cookie]]
        [message] = [m for m in mailbox if m.id == message_id] or [None]
        if message is None:
            assert reply == ["KO no such message: %d" % (message_id,)]
        else:
            assert reply == message.lines()

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    @precondition(lambda self: self.last_id)
    def delete(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        message_id = self.message_id(data, cookie)
        reply = self.request(connection, "DELETE %d" % (message_id,), explicit)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
            return
        mailbox = self.mailboxes[self.sessions[cookie]]
        if message_id in [m.id for m in mailbox]:
            assert reply == ["OK deleted 1"]
            mailbox[:] = [m for m in mailbox if m.id != message_id]
            self.deleted.add(message_id)
        else:
            assert reply == ["KO no such message: %d" % (message_id,)]

    @rule(connection=st.sampled_from(CONNECTIONS), data=st.data())
    def delete_subject(self, connection, data):
        explicit, cookie = self.cookie(data, connection)
        subjects = sorted({m.subject for box in self.mailboxes.values() for m in box} - {""})
        subject = data.draw(TEXT.filter(bool) | st.sampled_from(subjects or ["none"]))
        reply = self.request(connection, "DELETE SUBJECT " + subject, explicit)
        why = self.use(cookie)
        if why:
            self.refused(reply, why)
            return
        mailbox = self.mailboxes[self.sessions[cookie]]
        matching = [m for m in mailbox if m.subject == subject]
        if matching:
            assert reply == ["OK deleted %d" % (len(matching),)]
            mailbox[:] = [m for m in mailbox if m.subject != subject]
            self.deleted.update(m.id for m in matching)
        else:
            assert reply == ["KO no message with that subject"]

    # After every step

    def listing(self, messages):
        return ["OK %d messages" % (len(messages),)] + [m.header() for m in messages] + ["."]

    @invariant()
    def mailboxes_match_the_model(self):
        for account, cookie in self.observing.items():
            mailbox = self.mailboxes[account]
            assert self.observer("COUNT " + cookie) == ["COUNTED %d" % (len(mailbox),)]
            reply = self.observer("LIST " + cookie)
            # Learn the ids STORE does not tell.
            for message, line in zip(mailbox, reply[1:-1]):
                if message.id is None:
                    message.id = int(line.split(" ", 1)[0])
                    self.new_id(message.id)
                    assert message.id not in self.deleted
            assert reply == self.listing(mailbox)

    @invariant()
    def nothing_else_was_sent(self):
        for wire in [self.observer, *self.wires.values()]:
            assert wire.replies() == []
            assert not wire.transport.disconnecting


MailModel.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMailModel = MailModel.TestCase

"""
The web front over real sockets, in the test's reactor: /ws with autobahn's
Twisted WebSocket client (no browser) beside line-chat users, /status.json
against what the test did, /metrics through prometheus_client's own parser,
and the headers every response carries.
"""

import json

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints, reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from conftest import within

# Twisted's own HTTP client transport makes readBody warn; nothing to do with the server.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")


class WebClient(WebSocketClientProtocol):
    """A bot on /ws: what it receives waits in a queue, decoded."""

    def connectionMade(self):
        self.queue = defer.DeferredQueue()
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        super().connectionMade()

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.queue.put(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean, code, reason):
        if not self.opened.called:
            self.opened.errback(ConnectionError("refused: %s" % (reason,)))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def request(self, **message):
        self.sendMessage(json.dumps(message).encode("utf-8"))

    def next(self):
        return within(self.queue.get())

    async def expect(self, kind):
        """The next message, which must be of type C{kind}."""
        message = await self.next()
        assert message["type"] == kind, message
        return message

    async def ask(self, **message):
        """Send a request with an id; its answer (what came before it is kept)."""
        self.request(**message)
        answer = await self.next()
        assert answer.get("id") == message.get("id"), answer
        return answer


async def ws_connect(server, origin=None, headers=None):
    port = server.port("web")
    factory = WebSocketClientFactory(
        "ws://127.0.0.1:%d/ws" % (port,), origin=origin, headers=headers
    )
    factory.protocol = WebClient
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await within(endpoint.connect(factory))
    await within(client.opened)
    assert (await client.expect("hello"))["server"] == "mailsvc"
    return client


async def joined(server, nick, password=None):
    client = await ws_connect(server)
    answer = await client.ask(type="join", nick=nick, password=password, id="j")
    assert answer["type"] == "ok", answer
    return client


async def close(*clients):
    for client in clients:
        client.sendClose()
        await within(client.closed)


async def get(server, path, headers=None):
    agent = Agent(reactor)
    response = await within(
        agent.request(
            b"GET",
            b"http://127.0.0.1:%d%s" % (server.port("web"), path.encode()),
            Headers(headers or {}),
        )
    )
    body = await within(readBody(response))
    return response, body


async def next_chat(client):
    return await within(client.events().__anext__())


@pytest_twisted.ensureDeferred
async def test_web_and_line_chat_talk_both_ways(mailsvc_server):
    server = mailsvc_server
    bob = await within(server.connect_chat("bob"))
    alice = await joined(server, "alice")
    assert (await next_chat(bob)).text == "alice joined"
    alice.request(type="say", text="<b>hi</b> bob", id=1)
    assert await alice.expect("ok") == {"type": "ok", "id": 1}
    said = await next_chat(bob)
    assert (said.nick, said.text) == ("alice", "<b>hi</b> bob")
    bob.say("hello alice")
    message = await alice.expect("said")
    assert (message["nick"], message["text"]) == ("bob", "hello alice")
    assert isinstance(message["time"], float)
    assert await alice.ask(type="who", id=2) == {"type": "ok", "id": 2, "nicks": ["alice", "bob"]}
    # Private messages both ways.
    assert await alice.ask(type="msg", to="bob", text="psst", id=3) == {
        "type": "ok", "id": 3, "mailed": False,
    }
    private = await next_chat(bob)
    assert (private.kind, private.nick, private.text) == ("private", "alice", "psst")
    bob.msg("alice", "yes?")
    assert await alice.expect("private") == {
        "type": "private", "from": "bob", "to": "alice", "text": "yes?",
    }
    # A newcomer on the web sees the history, after its answer; and leaves.
    carol = await joined(server, "carol")
    history = await carol.expect("history")
    assert [(m["nick"], m["text"]) for m in history["messages"]] == [
        ("alice", "<b>hi</b> bob"), ("bob", "hello alice"),
    ]
    assert await alice.expect("joined") == {"type": "joined", "nick": "carol"}
    await close(carol)
    assert await alice.expect("left") == {"type": "left", "nick": "carol"}
    await close(alice)


@pytest_twisted.ensureDeferred
async def test_actions_cross_between_the_web_and_the_line_chat(mailsvc_server):
    server = mailsvc_server
    bob = await within(server.connect_chat("bob"))
    alice = await joined(server, "alice")
    await next_chat(bob)  # alice joined
    # The page's /me sends IRC's CTCP form, as every front stores an action.
    alice.request(type="say", text="\x01ACTION waves\x01", id=1)
    assert await alice.expect("ok") == {"type": "ok", "id": 1}
    assert "alice waves" in (await next_chat(bob)).text
    bob.me("waves back")
    message = await alice.expect("said")
    assert (message["nick"], message["text"], message["action"]) == ("bob", "waves back", True)
    await close(alice)


@pytest_twisted.ensureDeferred
async def test_a_mail_account_nickname_takes_its_password(mailsvc_server):
    server = mailsvc_server
    await within(server.add_user("dora", "secret"))
    dora = await ws_connect(server)
    refused = await dora.ask(type="join", nick="dora", id=7)
    assert (refused["type"], refused["error"]) == ("error", "nick_reserved")
    wrong = await dora.ask(type="join", nick="dora", password="nope", id=8)
    assert (wrong["type"], wrong["error"]) == ("error", "bad_credentials")
    right = await dora.ask(type="join", nick="DORA", password="secret", id=9)
    assert right == {"type": "ok", "id": 9, "nick": "dora", "registered": True}
    # Her new mail is told to her.
    await within(server.deliver("dora", "eve", "Lunch?", "at noon"))
    assert await dora.expect("mail") == {
        "type": "mail", "from": "eve", "subject": "Lunch?", "count": 1,
    }
    await close(dora)


@pytest_twisted.ensureDeferred
async def test_bad_requests_get_errors_in_order_and_the_connection_stays(mailsvc_server):
    server = mailsvc_server
    client = await ws_connect(server)
    client.sendMessage(b"not json")
    client.sendMessage(b"[1, 2]")
    client.sendMessage(json.dumps({"type": "dance", "id": "a"}).encode())
    client.sendMessage(json.dumps({"type": "say", "text": "hi", "id": "b"}).encode())
    client.sendMessage(b"\x00\x01", isBinary=True)
    # Pipelined behind a join that waits for the service: answered after it.
    client.sendMessage(json.dumps({"type": "join", "nick": "zed", "id": "c"}).encode())
    client.sendMessage(json.dumps({"type": "who", "id": "d"}).encode())
    answers = [await client.next() for _ in range(7)]
    assert [(a["type"], a.get("id"), a.get("error")) for a in answers] == [
        ("error", None, "bad_request"),
        ("error", None, "bad_request"),
        ("error", "a", "bad_request"),
        ("error", "b", "bad_request"),
        ("error", None, "bad_request"),
        ("ok", "c", None),
        ("ok", "d", None),
    ]
    assert answers[3]["reason"].startswith("join first")
    assert answers[6]["nicks"] == ["zed"]
    taken = await ws_connect(server)
    refused = await taken.ask(type="join", nick="ZED", id=1)
    assert refused["error"] == "nick_taken"
    invalid = await taken.ask(type="join", nick="<img src=x>", id=2)
    assert invalid["error"] == "invalid_nick"
    await close(client, taken)


@pytest_twisted.ensureDeferred
async def test_a_message_in_many_frames_arrives_whole(mailsvc_server):
    server = mailsvc_server
    bob = await within(server.connect_chat("bob"))
    alice = await joined(server, "alice")
    await next_chat(bob)  # alice joined
    text = "split é across frames " * 20
    alice.sendMessage(json.dumps({"type": "say", "text": text}).encode(), fragmentSize=7)
    said = await next_chat(bob)
    assert said.text == text
    await close(alice)


@pytest.mark.mailsvc(max_line=512)
@pytest_twisted.ensureDeferred
async def test_a_message_over_the_limit_closes_the_connection(mailsvc_server):
    client = await ws_connect(mailsvc_server)
    client.request(type="ping", padding="x" * 600)
    code, _ = await within(client.closed)
    assert code == 1009  # message too big


@pytest_twisted.ensureDeferred
async def test_another_sites_page_is_refused(mailsvc_server):
    server = mailsvc_server
    with pytest.raises(ConnectionError):
        await ws_connect(server, origin="http://evil.example")
    # The page's own origin, and a bot that sends none, are let in.
    own = await ws_connect(server, origin="http://127.0.0.1:%d" % (server.port("web"),))
    bot = await ws_connect(server)
    await close(own, bot)


@pytest.mark.mailsvc(web_origin="https://chat.example.org")
@pytest_twisted.ensureDeferred
async def test_web_origin_allows_other_pages(mailsvc_server):
    allowed = await ws_connect(mailsvc_server, origin="https://chat.example.org")
    with pytest.raises(ConnectionError):
        await ws_connect(mailsvc_server, origin="https://other.example.org")
    await close(allowed)


@pytest.mark.mailsvc(flood_rate=1, flood_burst=2)
@pytest_twisted.ensureDeferred
async def test_flood_control_as_on_the_chat_port(mailsvc_server):
    alice = await joined(mailsvc_server, "alice")
    for n in range(6):
        alice.request(type="say", text="line %d" % n, id=n)
    assert [m["type"] for m in [await alice.next(), await alice.next()]] == ["ok", "ok"]
    warning = await alice.next()
    assert (warning["type"], warning["error"]) == ("error", "too_fast")
    assert (await alice.next())["error"] == "flooding"
    code, _ = await within(alice.closed)
    assert code == 1008


@pytest.mark.mailsvc(nick_timeout=1)
@pytest_twisted.ensureDeferred
async def test_a_client_that_never_joins_is_timed_out(mailsvc_server):
    client = await ws_connect(mailsvc_server)
    message = await client.next()
    assert (message["type"], message["error"]) == ("error", "idle_timeout")
    code, _ = await within(client.closed)
    assert code == 1008


@pytest_twisted.ensureDeferred
async def test_shutdown_is_announced_and_closes(mailsvc_server):
    alice = await joined(mailsvc_server, "alice")
    stopped = mailsvc_server.stop()
    assert await alice.expect("shutdown") == {"type": "shutdown", "seconds": 0}
    code, _ = await within(alice.closed)
    assert code == 1001
    await within(stopped)


@pytest_twisted.ensureDeferred
async def test_pages_carry_security_headers(mailsvc_server):
    for path, kind in [("/", b"text/html"), ("/app.js", b"javascript"),
                       ("/style.css", b"text/css"), ("/status", b"text/html")]:
        response, body = await get(mailsvc_server, path)
        assert response.code == 200, path
        headers = response.headers
        csp = headers.getRawHeaders(b"content-security-policy")[0]
        assert b"script-src 'self'" in csp and b"default-src 'none'" in csp
        assert b"unsafe-inline" not in csp
        assert headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
        assert kind in headers.getRawHeaders(b"content-type")[0], path
    response, body = await get(mailsvc_server, "/")
    for element in (b'id="nick"', b'id="say"', b'id="log"'):
        assert element in body
    # Nothing from elsewhere.
    assert b"http" not in body.replace(b"http-equiv", b"")
    response, _ = await get(mailsvc_server, "/app.js/../../setup.cfg")
    assert response.code == 404


def metrics(text):
    """{(name, labels as a sorted tuple): value} of every sample."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest_twisted.ensureDeferred
async def test_status_and_metrics_tell_what_happened(mailsvc_server):
    server = mailsvc_server
    await within(server.add_user("alice", "pw"))
    mail = await within(server.connect_mail(user="alice", password="pw"))
    await within(mail.send("alice", "Hi", "one"))
    await within(mail.count())
    with pytest.raises(Exception):
        await within(mail.read(999))
    bob = await within(server.connect_chat("bob"))
    web = await joined(server, "carol")
    await next_chat(bob)
    web.request(type="say", text="hello", id=1)
    await web.expect("ok")
    await next_chat(bob)
    wrong = await ws_connect(server)
    assert (await wrong.ask(type="join", nick="alice", password="bad", id=1))["type"] == "error"

    response, body = await get(server, "/status.json")
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"application/json")
    status = json.loads(body)
    assert status["accounts"] == 1 and status["messages"] == 1
    assert status["connections"] == {
        "chat": 1, "irc": 0, "mail": 1, "pop3": 0, "smtp": 0, "web": 2,
    }
    assert status["room"] == {"participants": 2, "said": 1}
    assert status["storage"] == {"ok": True, "problem": None}
    assert status["bus"]["ok"] is True
    assert status["version"] and status["node"] and status["uptime"] >= 0
    # No secret: no password, no name, no message.
    for secret in (b"pw", b"alice", b"hello", b"Hi"):
        assert b'"%s"' % secret not in body

    response, body = await get(server, "/metrics")
    assert response.code == 200
    samples = metrics(body.decode("utf-8"))
    assert samples["mailsvc_connections", (("front", "web"),)] == 2
    assert samples["mailsvc_connections", (("front", "chat"),)] == 1
    assert samples["mailsvc_room_participants", ()] == 2
    assert samples["mailsvc_chat_lines_total", ()] == 1
    # carol's join and her line, each to bob (bob joined an empty room).
    assert samples["mailsvc_chat_deliveries_total", ()] == 2
    assert samples["mailsvc_mail_commands_total", (("result", "ok"), ("verb", "SEND"))] == 1
    assert samples["mailsvc_mail_commands_total", (("result", "ok"), ("verb", "COUNT"))] == 1
    assert samples["mailsvc_mail_commands_total", (("result", "ko"), ("verb", "READ"))] == 1
    assert samples["mailsvc_login_failures_total", ()] == 1
    assert samples["mailsvc_login_lockouts_total", ()] == 0
    assert samples["mailsvc_sendq_drops_total", (("front", "web"),)] == 0
    assert samples["mailsvc_storage_batch_size_count", ()] >= 3
    assert samples["mailsvc_storage_commit_seconds_count", ()] >= 3
    await close(web, wrong)

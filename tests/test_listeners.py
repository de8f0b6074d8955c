"""
How the fronts listen (mailsvc/listeners.py, mailsvc/tls.py): the listen
backlog given to each description, the TLS policy that no description can
weaken, and the open-file limit fitted to the fronts' connection limits.
In process; test_abuse_net.py replays the attacks against twistd.
"""

import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import quoteStringArgument
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage

from certs import self_signed
from conftest import within
from mailsvc import listeners, tls
from mailsvc.tap import Options


@pytest.fixture(scope="module")
def rsa_identity(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"), kind="rsa")


def ssl_description(identity, extra=""):
    return "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s%s" % (
        quoteStringArgument(str(identity.key)),
        quoteStringArgument(str(identity.cert)),
        extra,
    )


async def listen(description, backlog):
    from twisted.internet import reactor

    endpoint = listeners.server_endpoint(reactor, description, backlog)
    return await within(endpoint.listen(protocol.Factory.forProtocol(protocol.Protocol)))


# The backlog.


@pytest.mark.parametrize(
    "description, wanted",
    [
        ("tcp:0:interface=127.0.0.1", 777),
        ("tcp:0:interface=127.0.0.1:backlog=12", 12),  # its own wins
        ("tcp:interface=127.0.0.1:port=0", 777),
        ("ssl", 777),
        ("ssl-own", 13),
        ("unix", 777),
        ("haproxy:tcp:0:interface=127.0.0.1", 777),  # behind a load balancer too
    ],
)
@pytest_twisted.ensureDeferred
async def test_each_listener_gets_the_backlog(description, wanted, rsa_identity, tmp_path):
    """Planted: the backlog not passed on (Twisted's 50 each time)."""
    if description == "ssl":
        description = ssl_description(rsa_identity)
    elif description == "ssl-own":
        description = ssl_description(rsa_identity, ":backlog=13")
    elif description == "unix":
        description = "unix:%s" % (quoteStringArgument(str(tmp_path / "front.sock")),)
    port = await listen(description, 777)
    try:
        # What twisted.internet.tcp.Port and unix.Port pass to listen().
        assert port.backlog == wanted
    finally:
        await within(defer.maybeDeferred(port.stopListening))


def test_a_description_is_rebuilt_with_its_escapes():
    arguments, parameters = listeners._parse("unix:/tmp/a\\:b\\=c.sock:mode=660")
    assert arguments == ["unix", "/tmp/a:b=c.sock"]
    again = listeners._unparse(arguments, dict(parameters, backlog="5"))
    assert listeners._parse(again) == (arguments, dict(parameters, backlog="5"))


def test_backlog_is_an_option_with_a_generous_default():
    options = Options()
    options.parseOptions([])
    assert options["backlog"] >= 1024
    with pytest.raises(usage.UsageError, match="--backlog must be more than 0"):
        Options().parseOptions(["--backlog", "0"])


# The TLS policy.


@pytest.mark.parametrize(
    "extra, said",
    [
        (":sslmethod=TLSv1_METHOD", "sslmethod= is not accepted: the TLS versions are fixed"),
        (":sslmethod=SSLv23_METHOD", "sslmethod= is not accepted"),
        (":dhParameters=/tmp/dh.pem", "dhParameters= is not accepted"),
        (":ciphers=ALL", "ssl: takes no ciphers= parameter"),
    ],
)
def test_a_description_that_would_weaken_tls_is_refused(extra, said, rsa_identity):
    """Planted: the refusal removed (sslmethod=TLSv1_METHOD then serves TLS 1.0)."""
    description = ssl_description(rsa_identity, extra)
    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(["--irc-port", description])
    assert str(refused.value).startswith("--irc-port ssl:0:")
    assert said in str(refused.value)
    from twisted.internet import reactor

    with pytest.raises(ValueError, match=said.split(":")[0]):
        listeners.server_endpoint(reactor, description, 50)


def test_the_tls_policy_holds_behind_a_load_balancer(rsa_identity):
    """Planted: haproxy: descriptions not looked into (their ssl: unchecked)."""
    description = "haproxy:" + ssl_description(rsa_identity, ":sslmethod=TLSv1_METHOD")
    assert "sslmethod= is not accepted" in listeners.refusal(description)
    with pytest.raises(usage.UsageError, match="sslmethod= is not accepted"):
        Options().parseOptions(["--irc-port", description])


def handshake(port, version=None, cipher=None):
    """A TLS handshake with the server on C{port}; the cipher it chose."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if cipher is not None:
        context.set_ciphers(cipher + ":@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as wrapped:
            return wrapped.cipher()[0]


@pytest_twisted.ensureDeferred
async def test_the_policy_context_offers_forward_secret_aead_only(rsa_identity):
    """Planted: the standard fronts' old context (Twisted's defaults)."""
    from twisted.internet import reactor, threads
    from twisted.internet.endpoints import SSL4ServerEndpoint

    options = tls.server_options(str(rsa_identity.key), str(rsa_identity.cert))
    endpoint = SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1")
    port = await within(endpoint.listen(protocol.Factory.forProtocol(protocol.Protocol)))
    number = port.getHost().port
    try:
        for weak in ("AES128-SHA", "AES256-SHA", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"):
            with pytest.raises(ssl.SSLError):
                await within(
                    threads.deferToThread(handshake, number, ssl.TLSVersion.TLSv1_2, weak)
                )
        chosen = await within(
            threads.deferToThread(
                handshake, number, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256"
            )
        )
        assert chosen == "ECDHE-RSA-AES128-GCM-SHA256"
        assert await within(threads.deferToThread(handshake, number)) == "TLS_AES_256_GCM_SHA384"
    finally:
        await within(defer.maybeDeferred(port.stopListening))


# The open-file limit.


class Limits:
    """A stand-in for the resource module: C{getrlimit}/C{setrlimit} of NOFILE."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard, fail=False):
        self.soft, self.hard, self.fail = soft, hard, fail

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which, limits):
        assert which == self.RLIMIT_NOFILE
        if self.fail:
            raise ValueError("not allowed")
        soft, hard = limits
        assert hard == self.hard and (soft <= hard or hard == self.RLIM_INFINITY)
        self.soft = soft


@pytest.fixture
def warnings():
    seen = []

    def observe(event):
        if event.get("log_namespace") == "mailsvc.listeners":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


DEFAULT_NEED = 5 * 10_000 + listeners.OTHER_FILES  # five fronts, --max-connections 10000


def test_the_soft_limit_is_raised_to_the_hard_one_and_nothing_said(warnings):
    limits = Limits(1024, 524288)
    assert listeners.fit_open_files(DEFAULT_NEED, limits) == 524288
    assert limits.soft == 524288
    assert warnings == []


def test_a_hard_limit_too_low_is_warned_of(warnings):
    """Planted: the warning removed; and the raise removed."""
    limits = Limits(1024, 4096)
    assert listeners.fit_open_files(DEFAULT_NEED, limits) == 4096
    assert limits.soft == 4096
    [warning] = warnings
    assert warning.startswith("the open-file limit (4096) is below what the fronts may use (50128")
    assert "--max-connections" in warning


def test_an_unlimited_hard_limit_takes_what_is_needed(warnings):
    limits = Limits(1024, Limits.RLIM_INFINITY)
    assert listeners.fit_open_files(DEFAULT_NEED, limits) == DEFAULT_NEED
    assert warnings == []


def test_a_limit_that_cannot_be_raised_is_warned_of(warnings):
    limits = Limits(1024, 524288, fail=True)
    assert listeners.fit_open_files(DEFAULT_NEED, limits) == 1024
    assert len(warnings) == 2
    assert warnings[0].startswith("cannot raise the open-file limit from 1024 to 524288")


def test_a_high_soft_limit_is_left_alone(warnings):
    limits = Limits(600000, 600000)
    assert listeners.fit_open_files(DEFAULT_NEED, limits) == 600000
    assert warnings == []


def test_the_files_needed_are_each_fronts_limit_and_a_margin(service):
    from mailsvc.fronts.admission import Admission

    class Limited:
        def __init__(self, n):
            self.admission = Admission(n, 10)

    class Unlimited:
        pass

    needed = listeners.files_needed([Limited(100), Limited(50), Unlimited()], default=7)
    assert needed == 100 + 50 + 7 + listeners.OTHER_FILES

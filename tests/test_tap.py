"""twistd options and the shutdown sequence."""

import os

import pytest
from twisted.application import service
from twisted.internet import defer
from twisted.python import usage

from mailsvc.fronts.chat import ChatFactory
from mailsvc.fronts.mail import MailFactory
from mailsvc.application import GracefulShutdown, OneByOne
from mailsvc.tap import Options
from wire import Wire


def test_a_port_number_means_tcp_and_descriptions_pass_through():
    options = Options()
    options.parseOptions(["--port", "9000", "--chat-port", "unix:/tmp/chat.sock"])
    assert options["mail-port"] == "tcp:9000"
    assert options["chat-port"] == "unix:/tmp/chat.sock"
    assert options["db"] == os.path.abspath("mailsvc.sqlite")
    assert options["chat-log"] == os.path.abspath("chat.log")
    assert options["shutdown-grace"] == 5 and options["history"] == 20


def test_bad_numbers_are_refused():
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--shutdown-grace", "-1"])
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--history", "many"])


class Recording(service.Service):
    def __init__(self, name, stopped, log):
        self.name, self.stopped, self.log_ = name, stopped, log

    def stopService(self):
        self.log_.append(self.name)
        return self.stopped


def test_children_stop_one_at_a_time_last_first():
    log, first_stopped, second_stopped = [], defer.Deferred(), defer.Deferred()
    top = OneByOne()
    Recording("first", first_stopped, log).setServiceParent(top)
    Recording("second", second_stopped, log).setServiceParent(top)
    top.startService()
    done = []
    top.stopService().addBoth(done.append)
    assert log == ["second"]
    second_stopped.callback(None)
    assert log == ["second", "first"] and not done
    first_stopped.callback(None)
    assert done == [None]


def test_graceful_shutdown(service, clock):
    chat, mail = ChatFactory(service, clock=clock), MailFactory(service, clock=clock)
    chatter, mailer, other = Wire(chat), Wire(mail), Wire(chat)
    chatter.replies()
    assert chatter("NICK alice") == ["READY"]
    other.replies()
    other("NICK bob")
    chatter.replies()
    shutdown = GracefulShutdown([chat, mail], 5, clock)
    shutdown.startService()
    done = []
    shutdown.stopService().addBoth(done.append)
    assert chatter.replies() == ["Server will shut down in 5 seconds"]
    clock.advance(4)
    # The chat still works, and so does mail, during the grace period.
    assert mailer("HELP")[0] == "OK commands"
    assert not chatter.transport.disconnecting and not done
    clock.advance(1)
    assert chatter.transport.disconnecting and mailer.transport.disconnecting
    chatter.protocol.connectionLost(None)
    mailer.protocol.connectionLost(None)
    # Closed by the server, bob is not told that alice left.
    assert other.replies() == ["Server will shut down in 5 seconds"]
    other.protocol.connectionLost(None)
    assert done == [[[None, None], [None]]]
    assert not clock.getDelayedCalls()


def test_a_connection_that_will_not_close_is_aborted(service, clock):
    chat = ChatFactory(service, clock=clock)
    stuck = Wire(chat)
    aborted = []
    stuck.transport.abortConnection = lambda: aborted.append(True)
    done = []
    chat.closeAll(clock, patience=3).addBoth(done.append)
    clock.advance(3)
    assert aborted == [True] and not done
    stuck.protocol.connectionLost(None)
    assert len(done) == 1 and not clock.getDelayedCalls()

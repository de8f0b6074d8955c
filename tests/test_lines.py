"""What mailsvc reaches inside Twisted's LineReceiver (one place, mailsvc.fronts.lines)."""

from twisted.protocols.basic import LineReceiver

from mailsvc.fronts.lines import discard_unread, unread


class Lines(LineReceiver):
    delimiter = b"\n"

    def __init__(self):
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)


def test_unread_is_what_no_line_has_taken_yet():
    # Fails if a Twisted release stops keeping partial input in _buffer.
    receiver = Lines()
    receiver.dataReceived(b"one\ntw")
    assert receiver.lines == [b"one"]
    assert unread(receiver) == b"tw"
    discard_unread(receiver)
    assert unread(receiver) == b""
    receiver.dataReceived(b"o\n")
    assert receiver.lines == [b"one", b"o"]


def test_paused_input_waits_in_unread():
    # TextLineProtocol.hold sets paused, as LineReceiver.pauseProducing does.
    receiver = Lines()
    receiver.paused = True
    receiver.dataReceived(b"a\nb\n")
    assert receiver.lines == [] and unread(receiver) == b"a\nb\n"
    receiver.paused = False
    receiver.dataReceived(b"")
    assert receiver.lines == [b"a", b"b"] and unread(receiver) == b""

"""
A toy front, for the tests only: it answers every connection with who is in
the chat room, and closes. It is found as a Twisted plugin when this folder
(tests/toyfront) is on the path, as any installed package's front would be.
"""

from twisted.internet import protocol

from mailsvc.fronts.registry import Front


class EchoWho(protocol.Protocol):
    def connectionMade(self):
        d = self.factory.service.room.who()
        d.addCallback(lambda nicks: self.transport.write(("here: %s\r\n" % " ".join(nicks)).encode()))
        d.addBoth(lambda _: self.transport.loseConnection())


class EchoWhoFactory(protocol.Factory):
    protocol = EchoWho

    def __init__(self, service):
        self.service = service


echo_who = Front(
    name="echo-who",
    default="tcp:8099:interface=127.0.0.1",
    description="Who is in the chat (a toy front)",
    build=lambda service, config, reactor: EchoWhoFactory(service),
)

"""
For twisted.trial users:

    from twisted.trial import unittest
    from mailsvc.testing.trial import MailsvcTestCase

    class BotTests(MailsvcTestCase, unittest.TestCase):
        mailsvc_options = {"history": 0}

        async def test_something(self):
            client = await self.mailsvc.connect_mail(user="bob", password="pw", register=True)
"""

from twisted.internet import defer

from mailsvc.testing import start_server


class MailsvcTestCase:
    """
    Mix into L{twisted.trial.unittest.TestCase}: setUp starts a server
    (C{self.mailsvc}, a L{mailsvc.testing.MailsvcServer}) and returns the
    Deferred of its start; a cleanup stops it.
    """

    mailsvc_options = {}

    def setUp(self):
        d = defer.maybeDeferred(super().setUp)
        d.addCallback(lambda _: start_server(**self.mailsvc_options))

        def started(server):
            self.mailsvc = server
            self.addCleanup(server.stop)

        return d.addCallback(started)

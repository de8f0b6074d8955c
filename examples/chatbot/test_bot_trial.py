"""The same bot, tested with twisted.trial and mailsvc.testing.trial.MailsvcTestCase.

    python -m twisted.trial test_bot_trial
"""

from twisted.internet import task
from twisted.trial import unittest

from bot import DAY, Bot
from mailsvc.testing.trial import MailsvcTestCase


class BotTests(MailsvcTestCase, unittest.TestCase):
    mailsvc_options = {"history": 0}

    async def start_bot(self):
        self.clock = task.Clock()
        mail = await self.mailsvc.connect_mail(user="digestbot", password="pw", register=True)
        holder = {}
        chat = await self.mailsvc.connect_chat(
            "digestbot", "pw", on_event=lambda e: holder["bot"].on_event(e)
        )
        bot = holder["bot"] = Bot(chat, mail, ["reader"], self.clock)
        bot.start()
        self.addCleanup(bot.stop)
        return bot

    async def test_ping(self):
        await self.start_bot()
        user = await self.mailsvc.connect_chat("user")
        events = user.events().__aiter__()
        user.say("!PING")
        reply = await events.__anext__()
        self.assertEqual((reply.nick, reply.text), ("digestbot", "pong, user"))

    async def test_digest(self):
        bot = await self.start_bot()
        await self.mailsvc.add_user("reader", "pw")
        await self.mailsvc.deliver("reader", "postmaster", "Welcome", "Hello!")
        user = await self.mailsvc.connect_chat("user")
        user.say("one")
        user.say("!ping")
        events = user.events().__aiter__()
        await events.__anext__()  # pong: both lines have reached the bot
        self.clock.advance(DAY)
        await bot.digest_sent
        welcome, digest = await self.mailsvc.mailbox("reader")
        self.assertEqual(welcome.subject, "Welcome")
        self.assertEqual(digest.subject, "Chat digest: 2 messages")
        self.assertIn("user: one", digest.body)

"""
A tiny mailsvc bot: it sits in the chat, answers "!ping" and "!help", counts
who said what, and once a day mails a digest of the day's chat to a list of
subscribers.

    MAILSVC_PASSWORD=... python bot.py tcp:localhost:8026 tcp:localhost:8025 botname alice bob

The bot's account (botname) and the subscribers' must exist. The password comes
from MAILSVC_PASSWORD, or is asked on the terminal.
"""

import collections
import getpass
import os
import sys

from twisted.internet import defer, task

from mailsvc.client import connect_chat, connect_mail

DAY = 24 * 60 * 60


class Bot:
    """
    @param chat: a joined L{mailsvc.client.ChatClient} (whose on_event is ours).
    @param mail: a logged-in L{mailsvc.client.MailClient}.
    """

    def __init__(self, chat, mail, subscribers, clock):
        self.chat = chat
        self.mail = mail
        self.subscribers = list(subscribers)
        self.clock = clock
        self.said = collections.Counter()
        self.lines = []
        # The Deferred of the last digest sent on schedule.
        self.digest_sent = None
        self._daily = task.LoopingCall(self._on_schedule)
        self._daily.clock = clock

    def start(self):
        self._daily.start(DAY, now=False)

    def stop(self):
        if self._daily.running:
            self._daily.stop()

    def _on_schedule(self):
        # LoopingCall takes the result of what it is given: keep our own.
        sent = self.send_digest()
        self.digest_sent = defer.Deferred()
        sent.chainDeferred(self.digest_sent)
        return sent

    def on_event(self, event):
        if event.kind != "message":
            return
        self.said[event.nick] += 1
        self.lines.append("%s: %s" % (event.nick, event.text))
        command = event.text.strip().lower()
        if command == "!ping":
            self.chat.say("pong, %s" % (event.nick,))
        elif command == "!help":
            self.chat.say("I answer !ping, and mail a daily digest of this room.")

    def digest(self):
        """The subject and body of today's digest."""
        subject = "Chat digest: %d messages" % (len(self.lines),)
        people = ", ".join(
            "%s (%d)" % (nick, n) for nick, n in self.said.most_common()
        ) or "nobody"
        body = "\n".join(["Who spoke: " + people, ""] + self.lines)
        return subject, body

    @defer.inlineCallbacks
    def send_digest(self):
        """Mail today's digest to every subscriber and start a new day."""
        subject, body = self.digest()
        self.said.clear()
        self.lines = []
        ids = []
        for subscriber in self.subscribers:
            ids.append((yield self.mail.send(subscriber, subject, body)))
        return ids


@defer.inlineCallbacks
def run_bot(reactor, chat_address, mail_address, name, password, subscribers):
    mail = yield connect_mail(reactor, mail_address)
    yield mail.login(name, password)
    holder = {}
    chat = yield connect_chat(
        reactor, chat_address, name, password=password,
        on_event=lambda event: holder["bot"].on_event(event),
    )
    bot = holder["bot"] = Bot(chat, mail, subscribers, reactor)
    bot.start()
    return bot


def main(reactor, chat_address, mail_address, name, *subscribers):
    password = os.environ.get("MAILSVC_PASSWORD") or getpass.getpass("password: ")
    return run_bot(reactor, chat_address, mail_address, name, password, subscribers).addCallback(
        lambda bot: bot.chat.closed
    )


if __name__ == "__main__":
    task.react(main, sys.argv[1:])

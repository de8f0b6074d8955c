"""The bot against a real mailsvc, with the pytest fixtures from mailsvc.testing."""

import pytest
import pytest_twisted
from twisted.internet import defer, task

from bot import DAY, Bot

TIMEOUT = 10


def within(d):
    from twisted.internet import reactor

    return defer.ensureDeferred(d).addTimeout(TIMEOUT, reactor)


@pytest.fixture
def bot(mailsvc_server, mail_client):
    """The bot, logged in as alice (mail_client's default user) and in the chat."""
    clock = task.Clock()
    holder = {}
    chat = pytest_twisted.blockon(
        within(
            mailsvc_server.connect_chat(
                "alice", "password", on_event=lambda e: holder["bot"].on_event(e)
            )
        )
    )
    bot = holder["bot"] = Bot(chat, mail_client, ["bob", "carol"], clock)
    bot.start()
    yield bot
    bot.stop()


@pytest.mark.mailsvc_nick("bob")
@pytest_twisted.ensureDeferred
async def test_the_bot_answers_ping(bot, chat_client):
    events = chat_client.events().__aiter__()
    chat_client.say("!ping")
    reply = await within(events.__anext__())
    assert (reply.nick, reply.text) == ("alice", "pong, bob")


@pytest.mark.mailsvc_nick("dave")
@pytest_twisted.ensureDeferred
async def test_the_bot_mails_a_daily_digest(bot, chat_client, mailsvc_server):
    await within(mailsvc_server.add_user("bob", "pw"))
    await within(mailsvc_server.add_user("carol", "pw"))
    events = chat_client.events().__aiter__()
    chat_client.say("hello room")
    chat_client.say("!help")
    assert (await within(events.__anext__())).text.startswith("I answer !ping")
    assert mailsvc_server.participants() == ["alice", "dave"]
    # A day passes (on the bot's own clock), and the digest goes out.
    assert bot.digest_sent is None
    bot.clock.advance(DAY)
    assert len(await within(bot.digest_sent)) == 2
    for subscriber in ("bob", "carol"):
        [digest] = await within(mailsvc_server.mailbox(subscriber))
        assert digest.sender == "alice"
        assert digest.subject == "Chat digest: 2 messages"
        assert digest.body.splitlines() == [
            "Who spoke: dave (2)", "", "dave: hello room", "dave: !help"
        ]

"""
The chat on a terminal: what arrives scrolls above a prompt that keeps what
is being typed, and a dropped connection is joined again, with back-off,
under the same nickname.
"""

import re

from prompt_toolkit.application import get_app
from prompt_toolkit.patch_stdout import patch_stdout
from twisted.internet import defer

from mailsvc.client import NickRefused
from mailsvc.terminal import look
from mailsvc.terminal.prompt import Words, new_session, prompt, show

COMMANDS = ["/who", "/msg ", "/help", "/quit"]
# Seconds before each attempt to join again; the last repeats.
BACKOFF = (1, 2, 4, 8, 16, 30)
# How long BYE may take before the connection is simply closed.
BYE_TIMEOUT = 5
_RENAMED = re.compile(r"(\S+) is now known as (\S+)\Z")
_CAME = re.compile(r"(\S+) (joined|left)\Z")


class ChatScreen:
    """
    @param join: C{join(nick, on_event, on_retry)} connects and joins the room;
        it fires with the client (a L{mailsvc.client.ChatClient} or an
        L{mailsvc.ircclient.IRCChatClient}: C{nick}, C{closed}, C{sendText},
        C{who}, C{bye}).
    """

    def __init__(self, reactor, join, nick):
        self.reactor = reactor
        self.join = join
        self.nick = nick
        self.client = None
        self.nicks = {}  # lower case -> as written
        self.leaving = False
        self._attempts = 0
        self._retry = None
        self._nick_session = new_session()
        # The line typed goes: it comes back as the room sees it, time stamped.
        self.session = new_session(completer=Words(self.choices), erase_when_done=True)

    # What arrives

    def show(self, event):
        self._track(event)
        show(look.chat_line(event, self.nick, self.reactor.seconds()))

    def note(self, text):
        show(look.status_line(text, self.reactor.seconds()))

    def _track(self, event):
        """Keep the nicknames in the room up to date, for completion."""
        if event.nick:
            self.nicks[event.nick.lower()] = event.nick
        if event.kind != "notice":
            return
        came = _CAME.match(event.text)
        renamed = _RENAMED.match(event.text)
        if came and came.group(2) == "joined":
            self.nicks[came.group(1).lower()] = came.group(1)
        elif came:
            self.nicks.pop(came.group(1).lower(), None)
        elif renamed:
            self.nicks.pop(renamed.group(1).lower(), None)
            self.nicks[renamed.group(2).lower()] = renamed.group(2)

    def choices(self, words, word):
        """Tab: commands first on the line, nicknames elsewhere (with C{: }
        first on the line, to speak to someone)."""
        others = sorted(n for k, n in self.nicks.items() if k != (self.nick or "").lower())
        if not words and word.startswith("/"):
            return COMMANDS
        if not words:
            return [n + ": " for n in others]
        if len(words) == 1 and words[0].lower() == "/msg":
            return [n + " " for n in others]
        return others

    # Joining

    async def _ask_nick(self, reason):
        self.note("nickname refused: " + reason)
        nick = await prompt(self._nick_session, "nickname: ")
        return (nick or "").strip() or None

    async def start(self):
        """Join for the first time; the caller turns failures into exit codes."""
        client = await self.join(
            self.nick, self.show, lambda reason: defer.ensureDeferred(self._ask_nick(reason))
        )
        self._connected(client)
        self.note("joined as %s. Tab completes, /help lists commands, Ctrl-D leaves." % self.nick)

    def _connected(self, client):
        self.client = client
        self.nick = client.nick
        self._attempts = 0
        self.nicks = {self.nick.lower(): self.nick}
        client.closed.addCallback(lambda _: self._lost(client))

        def listed(nicks):
            for nick in nicks:
                self.nicks[nick.lower()] = nick

        client.who().addCallbacks(listed, lambda failure: None)

    def _lost(self, client):
        if client is not self.client:
            return
        self.client = None
        if not self.leaving:
            self._again("connection lost")

    def _again(self, why):
        delay = BACKOFF[min(self._attempts, len(BACKOFF) - 1)]
        self._attempts += 1
        self.note("%s; joining again in %d s (Ctrl-D leaves)" % (why, delay))
        self._retry = self.reactor.callLater(delay, self._rejoin)

    def _rejoin(self):
        self._retry = None
        defer.ensureDeferred(self._rejoining())

    async def _rejoining(self):
        try:
            # No questions this time: a nickname taken meanwhile is tried again later.
            client = await self.join(self.nick, self.show, lambda reason: None)
        except NickRefused as e:
            if not self.leaving:
                self._again("nickname %s refused: %s" % (self.nick, e.reason))
            return
        except Exception as e:
            if not self.leaving:
                self._again("cannot join again: %s" % (e,))
            return
        if self.leaving:
            client.bye()
            return
        self._connected(client)
        self.note("joined again as %s" % (self.nick,))

    # What is typed

    def _prompt(self):
        return [("class:prompt", "[%s] " % (self.nick,))]

    async def run(self):
        """
        Read and send lines until Ctrl-D, Ctrl-C, /quit or BYE; then leave.

        One prompt for the whole session: Enter hands the line to L{_accept}
        and the prompt stays up, so that keys typed meanwhile never reach a
        terminal in cooked mode (which would echo them over the chat).
        """
        self.session.default_buffer.accept_handler = self._accept
        with patch_stdout(raw=True):
            await prompt(self.session, self._prompt)
        await self.leave()

    def _accept(self, buffer):
        """Enter: send the line; True keeps it on the prompt."""
        if not buffer.text.strip():
            return False
        if self.client is None:
            self.note("not connected: nothing was sent; your line stays on the prompt")
            return True
        # A paste may hold several lines: each goes as typed.
        if not self._send_all(buffer.text.splitlines()):
            get_app().exit(result=None)
            return False
        # Clear the line and load the history (for Up) now: the load is a task
        # that runs before the line leaves the socket. prompt_toolkit would
        # load it at the next repaint, after keys that may come first.
        buffer.reset(append_to_history=True)
        buffer.load_history_if_not_yet_loaded()
        return True  # kept: it is already cleared

    def _send_all(self, lines):
        """Send each line; False once one says to leave."""
        for line in lines:
            if not line.strip():
                continue
            if line.strip().lower() in ("/quit", "bye"):
                return False
            self.client.sendText(line)
            show(look.own_line(line, self.nick, self.reactor.seconds()))
        return True

    async def leave(self):
        self.leaving = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        client = self.client
        if client is None:
            return
        timeout = self.reactor.callLater(BYE_TIMEOUT, client.transport.abortConnection)
        await client.bye()
        if timeout.active():
            timeout.cancel()

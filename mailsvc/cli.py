"""
mailsvc-client: the command-line client for both ports.

  mailsvc-client mail                       an interactive mail shell
  mailsvc-client chat --nick N              join the chat from the terminal
  mailsvc-client send --user U TO SUBJECT   one-shot commands for scripts
  mailsvc-client count|list|read|delete|register --user U ...

Settings come from the options, MAILSVC_* variables and the profile file
(L{mailsvc.profile}); passwords from MAILSVC_PASSWORD, the profile (mode 0600
only) or a prompt, never from the command line. On a terminal, C{mail} and
C{chat} use prompt_toolkit (L{mailsvc.terminal}); piped, they read and write
plain lines.
"""

import getpass
import os
import sys
from importlib import metadata

from twisted.internet import defer, stdio, task
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from zope.interface import implementer

from mailsvc import client as mc
from mailsvc import profile as profiles

SHELL_HELP = [
    "commands:",
    "  send                 write a message (asks for recipient, subject, body)",
    "  list [from <user>]   your messages",
    "  read <id>            show a message",
    "  delete <id>          delete a message",
    "  count                how many messages you have",
    "  logout               log out and leave",
    "  quit                 leave",
]


class Failed(Exception):
    """Ends the command with a message on stderr and a non-zero status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


@implementer(IHalfCloseableProtocol)
class Console(LineReceiver):
    """The terminal: C{ask} fires with the next line typed, None at end of input."""

    delimiter = b"\n"

    def __init__(self):
        self._lines = defer.DeferredQueue()
        self.closed = defer.Deferred()

    def lineReceived(self, line):
        self._lines.put(line.rstrip(b"\r").decode("utf-8", "replace"))

    def readConnectionLost(self):
        self._lines.put(None)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self._lines.put(None)
        self.closed.callback(None)

    def close(self):
        """Fire once everything written has reached the terminal."""
        self.transport.loseConnection()
        return self.closed

    def ask(self, prompt="", kind=None, choices=None, default=""):
        """The next line; C{kind}, C{choices} and C{default} are for a
        terminal (L{mailsvc.terminal.prompt.TerminalConsole})."""
        if prompt:
            self.transport.write(prompt.encode("utf-8"))
        d = self._lines.get()

        def ended(line):
            if line is None:
                self._lines.put(None)  # and for every later ask
            return line

        return d.addCallback(ended)

    async def ask_secret(self, prompt):
        with _no_echo():
            line = await self.ask(prompt)
        if sys.stdin.isatty():
            self.say("")
        return line

    def say(self, *lines):
        self.transport.write(b"".join(l.encode("utf-8") + b"\n" for l in lines))

    def show_list(self, messages):
        _print_list(self.say, messages)

    async def page(self, lines):
        self.say(*lines)

    def can_edit(self):
        """Whether L{edited_body} can open an editor: not on a pipe."""
        return False


class _no_echo:
    """Turn off the terminal's echo while a password is typed."""

    def __enter__(self):
        self.saved = None
        if sys.stdin.isatty():
            import termios

            self.saved = termios.tcgetattr(0)
            quiet = termios.tcgetattr(0)
            quiet[3] &= ~termios.ECHO
            termios.tcsetattr(0, termios.TCSANOW, quiet)

    def __exit__(self, *exc):
        if self.saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSANOW, self.saved)


def password(profile, account):
    """From MAILSVC_PASSWORD, the profile, or asked on the terminal."""
    secret = profile.password_for(account)
    if secret:
        return secret
    try:
        open("/dev/tty").close()  # getpass would fall back to stdin, and echo
        return getpass.getpass("password: ")
    except (EOFError, OSError):
        raise Failed("no password: set MAILSVC_PASSWORD or run on a terminal", 2)


# Options


def version():
    """mailsvc's version, then Twisted's: what a bug report needs."""
    import twisted

    try:
        ours = metadata.version("mailsvc")
    except metadata.PackageNotFoundError:
        ours = "unknown (not installed)"
    return "mailsvc-client (mailsvc) %s\nTwisted %s" % (ours, twisted.__version__)


class _Versioned(usage.Options):
    def opt_version(self):
        """Print mailsvc's version (and Twisted's) and exit."""
        print(version())
        sys.exit(0)


class _Server(_Versioned):
    # The profile's setting for the port, and the port without one.
    port_setting = "mail_port"
    default_port = 8025
    optParameters = [
        ["host", "H", None, "Server host (default: localhost)."],
        ["port", "P", None, "Server port (mail 8025, chat 8026, IRC 6667)."],
        ["connect", None, None, "Endpoint description instead (tcp:host:port, ssl:...)."],
    ]

    def settle(self, profile):
        """Fill what the command line left out from the variables and the profile."""
        self.profile = profile
        self["host"] = self["host"] or profile.get("host") or "localhost"
        self["port"] = self["port"] or profile.get(self.port_setting) or self.default_port

    def endpoint(self):
        if self["connect"]:
            return self["connect"]
        return "tcp:%s:%s" % (self["host"], self["port"])


class _Mail(_Server):
    synopsis = "[--user U] [--host H] [--port P | --connect D]"
    optParameters = [
        ["user", "u", None, "Log in as this account at once (with a password from "
         "MAILSVC_PASSWORD or the profile)."],
    ]

    def settle(self, profile):
        super().settle(profile)
        self["user"] = self["user"] or profile.get("user")


class _OneShot(_Server):
    optParameters = [["user", "u", None, "Your mail account (default: USER)."]]

    def settle(self, profile):
        super().settle(profile)
        self["user"] = self["user"] or profile.get("user") or os.environ.get("USER")
        if not self["user"]:
            raise usage.UsageError("--user is required")


class _Send(_OneShot):
    synopsis = "--user U RECIPIENT SUBJECT... < body"

    def parseArgs(self, recipient, *subject):
        self["recipient"] = recipient
        self["subject"] = " ".join(subject)


class _List(_OneShot):
    synopsis = "--user U [--from SENDER]"
    optParameters = [["from", "f", None, "Only messages from this sender."]]


class _ById(_OneShot):
    synopsis = "--user U MESSAGE-ID"

    def parseArgs(self, message_id):
        try:
            self["id"] = int(message_id)
        except ValueError:
            raise usage.UsageError("message id must be a number")


class _Chat(_Server):
    synopsis = "[--nick N] [--registered] [--irc] [--host H] [--port P | --connect D]"
    port_setting = "chat_port"
    default_port = 8026
    optParameters = [
        ["nick", "n", None, "Nickname (default: USER)."],
        ["channel", None, None, "With --irc: the room's channel (default: #chat)."],
    ]
    optFlags = [
        ["registered", "r", "Your nickname is your mail account: send its password."],
        ["irc", None, "Join through the IRC front (port 6667) instead of the line chat."],
    ]

    def settle(self, profile):
        if self["irc"]:
            self.port_setting, self.default_port = "irc_port", 6667
        super().settle(profile)
        self["nick"] = self["nick"] or profile.get("nick") or os.environ.get("USER")
        self["channel"] = self["channel"] or profile.get("channel") or "#chat"
        if not self["nick"]:
            raise usage.UsageError("--nick is required")


class Options(_Versioned):
    synopsis = "mailsvc-client [--profile NAME] COMMAND [options]"
    optParameters = [
        ["profile", None, None, "The profile to use from the profile file "
         "(default: MAILSVC_PROFILE, else [default])."],
    ]
    subCommands = [
        ["mail", None, _Mail, "Interactive mail shell."],
        ["chat", None, _Chat, "Join the group chat."],
        ["send", None, _Send, "Send the mail read from standard input."],
        ["count", None, _OneShot, "Print how many messages you have."],
        ["list", None, _List, "List your messages."],
        ["read", None, _ById, "Print a message."],
        ["delete", None, _ById, "Delete a message."],
        ["register", None, _OneShot, "Create an account."],
    ]

    def getSynopsis(self):
        if getattr(self, "subCommand", None):  # a command's: its own synopsis follows
            return "mailsvc-client [--profile NAME]"
        return self.synopsis

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("a command is required")


def parse(argv, environ=os.environ):
    """
    The L{Options} of C{argv}, settled with the profile; warnings about the
    profile file go to standard error.

    @raise Failed: wrong usage or an unusable profile (status 2).
    """
    options = Options()
    try:
        options.parseOptions(argv)
        profile = profiles.load(options["profile"], environ)
        options.subOptions.settle(profile)
    except usage.UsageError as e:
        raise Failed("%s\n%s" % (e, getattr(options, "subOptions", None) or options), 2)
    except profiles.ProfileError as e:
        raise Failed(str(e), 2)
    for warning in profile.warnings:
        sys.stderr.write("mailsvc-client: warning: %s\n" % (warning,))
    return options


# Commands


async def _connected(reactor, connect, address, *args, **kwargs):
    """
    C{connect(reactor, address, ...)}, with a malformed address or a failure
    to connect turned into a plain message.
    """
    try:
        clientFromString(reactor, address)
    except (ValueError, TypeError, KeyError) as e:
        raise Failed("bad address %s: %s" % (address, e), 2)
    try:
        return await connect(reactor, address, *args, **kwargs)
    except (mc.RequestFailed, ValueError):
        raise
    except (mc.NoReply, mc.UnexpectedReply) as e:
        raise _not_served(address, e)
    except Exception as e:  # refused, unreachable, certificate checks, ...
        raise Failed("cannot connect to %s: %s" % (address, _describe(e)), 3)


def _describe(error):
    if isinstance(error, ConnectError):
        return str(error)
    text = str(error)
    if "certificate verify failed" in text or "VerificationError" in type(error).__name__:
        return "the server's certificate could not be verified (%s)" % (text,)
    return text or type(error).__name__


# How long the chat's HELLO may take: the server sends it at once (after the
# TLS handshake), so waiting longer only hides a wrong port.
GREETING_TIMEOUT = 15


def _tls_address(address):
    """C{tls:HOST:PORT} for a plain C{tcp:} address, or None."""
    if not address.startswith("tcp:") or "\\" in address:
        return None
    positional, named = [], {}
    for part in address[len("tcp:") :].split(":"):
        if "=" in part:
            key, value = part.split("=", 1)
            named[key] = value
        else:
            positional.append(part)
    host = named.get("host", positional[0] if positional else None)
    port = named.get("port", positional[1] if len(positional) > 1 else None)
    if not host or not port:
        return None
    return "tls:%s:%s" % (host, port)


def _not_served(address, error):
    """
    The L{Failed} for a server that does not speak this port's protocol: a TLS
    port spoken to in plain text, another service, the other mailsvc port.
    """
    tls = _tls_address(address)
    try_tls = (
        "try --connect %s (with :trustRoots=DIR for a private CA), or an ssl: address" % tls
        if tls
        else "try a tls: or ssl: address with --connect"
    )
    if isinstance(error, mc.UnexpectedReply):
        text = "%s answered %r: that is not a mailsvc reply" % (address, error.line[:80])
        if error.line == "HELLO":
            text += " (it is the chat port: mail is on the other port)"
        else:
            text += "; is it the right port?"
    elif error.tls:
        text = "%s answered in TLS: it is a TLS port; %s" % (address, try_tls)
    elif error.seconds is not None:
        text = "%s sent no greeting in %s seconds: is it a mailsvc chat port?" % (
            address,
            error.seconds,
        )
        if tls:
            text += " If it is a TLS port, " + try_tls
    elif error.received:
        text = "%s sent %r and closed the connection: is it a mailsvc port?" % (
            address,
            error.received,
        )
    else:
        text = "the server at %s closed the connection before greeting: is it a TLS port?" % (
            address,
        )
        if tls or not address.startswith(("ssl:", "tls:")):
            text += " " + try_tls
    return Failed(text, 3)


async def _mail_client(reactor, options):
    address = options.endpoint()
    client = await _connected(reactor, mc.connect_mail, address)
    # A first request without the password: a TLS port spoken to in plain
    # text, or another service, shows itself before any password is sent.
    try:
        await client.help()
    except BaseException as e:
        client.transport.loseConnection()
        if isinstance(e, (mc.NoReply, mc.UnexpectedReply)):
            raise _not_served(address, e)
        if isinstance(e, mc.RequestFailed):  # too many connections, say
            raise Failed(e.reason)
        if isinstance(e, (ConnectionDone, ConnectionLost)):
            raise Failed("the server closed the connection", 3)
        raise
    return client


def _message_lines(message):
    return [
        "Id: %d" % message.id,
        "From: " + message.sender,
        "Date: " + message.date,
        "Subject: " + message.subject,
        "",
        *message.body.split("\n"),
    ]


def _print_list(write, messages):
    for m in messages:
        write("%5d  %-12s %s  %s" % (m.id, m.sender, m.date, m.subject))
    write("%d message%s" % (len(messages), "" if len(messages) == 1 else "s"))


def _stdout(*lines):
    sys.stdout.write("".join(line + "\n" for line in lines))


async def one_shot(reactor, options):
    command, sub = options.subCommand, options.subOptions
    secret = password(sub.profile, sub["user"])
    body = sys.stdin.read() if command == "send" else None
    client = await _mail_client(reactor, sub)
    try:
        if command == "register":
            await client.register(sub["user"], secret)
            _stdout("registered %s" % sub["user"])
        else:
            await client.login(sub["user"], secret)
            await _one_shot(client, command, sub, body)
        await client.logout()
    except mc.RequestFailed as e:
        raise Failed(e.reason)
    except ValueError as e:
        raise Failed(str(e), 2)
    except (mc.NoReply, mc.UnexpectedReply) as e:
        raise _not_served(sub.endpoint(), e)
    except (ConnectionDone, ConnectionLost):
        raise Failed("the server closed the connection", 3)
    finally:
        if client.cookie is not None:
            # Failed half way: end the session all the same (its reply is not needed).
            client.logout().addErrback(lambda failure: None)
        client.transport.loseConnection()


async def _one_shot(client, command, sub, body):
    if command == "send":
        message_id = await client.send(sub["recipient"], sub["subject"], body.rstrip("\n"))
        _stdout("sent message %d to %s" % (message_id, sub["recipient"]))
    elif command == "count":
        _stdout(str(await client.count()))
    elif command == "list":
        _print_list(_stdout, await client.list(sub["from"]))
    elif command == "read":
        _stdout(*_message_lines(await client.read(sub["id"])))
    elif command == "delete":
        await client.delete(sub["id"])
        _stdout("deleted message %d" % sub["id"])


SHELL_COMMANDS = ["send", "list", "read", "delete", "count", "help", "logout", "quit"]


class _Shell:
    """The mail shell, on any console: the line L{Console}, or a terminal's."""

    def __init__(self, console, client):
        self.console = console
        self.client = client
        # For completion: the people seen (senders, recipients) and the ids listed.
        self.people = set()
        self.ids = []

    def command_choices(self, words, word):
        if not words:
            return SHELL_COMMANDS
        command = words[0].lower()
        if command == "list":
            return ["from "] if len(words) == 1 else sorted(self.people)
        if command in ("read", "delete") and len(words) == 1:
            return self.ids
        return []

    def people_choices(self, words, word):
        return sorted(self.people)

    async def log_in(self, user, secret):
        console, client = self.console, self.client
        if user and secret:
            try:
                await client.login(user, secret)
            except mc.RequestFailed as e:
                console.say("error: " + e.reason)
            else:
                return self._logged_in(user)
        while True:
            choice = await console.ask("login or register? [l/r] ")
            if choice is None:
                return False
            choice = choice.strip().lower()
            if choice not in ("l", "login", "r", "register"):
                console.say("type l to log in or r to register")
                continue
            answer = await console.ask("user: ", default=user or "")
            secret = await console.ask_secret("password: ")
            if answer is None or secret is None:
                return False
            act = client.login if choice.startswith("l") else client.register
            try:
                await act(answer.strip(), secret)
            except mc.RequestFailed as e:
                console.say("error: " + e.reason)
            except ValueError as e:
                console.say("error: %s" % (e,))
            else:
                return self._logged_in(answer.strip())

    def _logged_in(self, user):
        self.console.say("Logged in as %s." % user)
        self.people.add(user)
        return True

    async def run(self):
        console, client = self.console, self.client
        while True:
            line = await console.ask("mail> ", choices=self.command_choices)
            if line is None:
                return
            words = line.split()
            if not words:
                continue
            command, args = words[0].lower(), words[1:]
            try:
                if command in ("quit", "exit"):
                    return
                elif command == "help":
                    console.say(*SHELL_HELP)
                elif command == "logout":
                    await client.logout()
                    console.say("Logged out.")
                    return
                elif command == "count":
                    count = await client.count()
                    console.say("%d message%s" % (count, "" if count == 1 else "s"))
                elif command == "list":
                    sender = args[1] if len(args) == 2 and args[0].lower() == "from" else None
                    messages = await client.list(sender)
                    self.people.update(m.sender for m in messages)
                    self.ids = [str(m.id) for m in messages]
                    console.show_list(messages)
                elif command in ("read", "delete"):
                    message_id = await self.message_id(args)
                    if message_id is None:
                        continue
                    if command == "read":
                        message = await client.read(message_id)
                        self.people.add(message.sender)
                        await console.page(_message_lines(message))
                    else:
                        await client.delete(message_id)
                        console.say("Deleted message %d." % message_id)
                elif command == "send":
                    await self.compose()
                else:
                    console.say("unknown command %s; type help" % command)
            except mc.RequestFailed as e:
                console.say("error: " + e.reason)
            except ValueError as e:
                console.say("error: %s" % (e,))

    async def message_id(self, args):
        word = args[0] if args else await self.console.ask(
            "message id: ", choices=lambda words, word: self.ids
        )
        if word is None or not word.strip().isdigit():
            self.console.say("a message id is a number; see list")
            return None
        return int(word)

    async def compose(self):
        console = self.console
        recipient = await console.ask("to: ", choices=self.people_choices)
        subject = await console.ask("subject: ")
        if recipient is None or subject is None:
            return
        if console.can_edit():
            body = await console.edited_body()
            if body is None:
                return
        else:
            console.say("Type the message; end it with a line holding only a dot.")
            body = await _dotted_body(console)
        message_id = await self.client.send(recipient.strip(), subject.strip(), body)
        self.people.add(recipient.strip())
        console.say("Sent message %d to %s." % (message_id, recipient.strip()))


async def _dotted_body(console):
    """Lines up to one holding only a dot (or the end of input)."""
    lines = []
    while True:
        line = await console.ask(kind="body")
        if line is None or line == ".":
            break
        lines.append(line)
    return "\n".join(lines)


async def mail_shell(reactor, options, console):
    client = await _mail_client(reactor, options)
    console.say("Connected to %s. Type help for commands." % options.endpoint())
    shell = _Shell(console, client)
    user = options["user"]
    try:
        if await shell.log_in(user, options.profile.password_for(user) if user else None):
            await shell.run()
    except (mc.NoReply, mc.UnexpectedReply) as e:
        raise _not_served(options.endpoint(), e)
    except (ConnectionDone, ConnectionLost):
        console.say("The server closed the connection.")
    finally:
        client.transport.loseConnection()


def _joiner(reactor, options, secret):
    """
    C{join(nick, on_event, on_retry)}: connect and join the room through the
    line chat, or with C{--irc} the IRC front; fire with the client.
    """
    address = options.endpoint()
    if options["irc"]:
        from mailsvc import ircclient  # twisted.words imports the reactor

        def connect(reactor, address, nick, **kwargs):
            return ircclient.connect_irc(
                reactor, address, nick, channel=options["channel"], **kwargs
            )

    else:
        connect = mc.connect_chat

    def join(nick, on_event, on_retry):
        return defer.ensureDeferred(
            _connected(
                reactor,
                connect,
                address,
                nick,
                password=secret,
                on_retry=on_retry,
                on_event=on_event,
                greeting_timeout=GREETING_TIMEOUT,
            )
        )

    return join


async def _first_join(joining):
    """The first join's refusals as exit codes."""
    try:
        return await joining
    except mc.NickRefused:
        raise Failed("no nickname accepted")
    except mc.RequestFailed as e:  # refused before the greeting
        raise Failed(e.reason)
    except ValueError as e:
        raise Failed(str(e), 2)


def _chat_secret(options):
    return password(options.profile, options["nick"]) if options["registered"] else None


async def chat(reactor, options, console):
    """The chat in plain lines: what arrives is printed as it comes."""
    join = _joiner(reactor, options, _chat_secret(options))

    async def retry(reason):
        console.say("nickname refused: " + reason)
        return (await console.ask("nickname: ") or "").strip() or None

    def show(event):
        if event.kind == "shutdown":
            console.say("*** the server is shutting down in %d seconds" % event.seconds)
        elif event.kind == "message":
            console.say("%s: %s" % (event.nick, event.text))
        elif event.kind == "history":
            console.say("[history] %s: %s" % (event.nick, event.text))
        elif event.kind == "private":
            console.say("*%s* %s" % (event.nick, event.text))
        elif event.kind == "error":
            console.say("* error: " + event.text)
        else:
            console.say("* " + event.text)

    client = await _first_join(
        join(options["nick"], show, lambda reason: defer.ensureDeferred(retry(reason)))
    )
    console.say("Joined as %s. /help for commands, end of input to leave." % client.nick)
    # Ctrl-C stops the reactor: say BYE on the way out.
    reactor.addSystemEventTrigger("before", "shutdown", client.bye)
    input_ended = defer.ensureDeferred(_chat_input(console, client))
    await defer.DeferredList([input_ended, client.closed], fireOnOneCallback=True)
    if not client.closed.called:
        await client.bye()
    else:
        console.say("* the server closed the connection")


async def _chat_input(console, client):
    while True:
        line = await console.ask()
        if line is None:
            return
        client.sendText(line)


async def terminal_chat(reactor, options):
    """The chat on a terminal (L{mailsvc.terminal.chat.ChatScreen})."""
    from mailsvc.terminal.chat import ChatScreen

    screen = ChatScreen(reactor, _joiner(reactor, options, _chat_secret(options)), options["nick"])
    await _first_join(screen.start())
    # SIGTERM or SIGINT from outside stop the reactor: say BYE on the way out.
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(screen.leave()))
    await screen.run()


async def run(reactor, options, terminal=False):
    """Run the command of C{options} (from L{parse}); C{terminal}: mail and
    chat on a terminal, with the asyncio reactor running."""
    command = options.subCommand
    if command in ("mail", "chat") and terminal:
        if command == "mail":
            from mailsvc.terminal.prompt import TerminalConsole

            await mail_shell(reactor, options.subOptions, TerminalConsole())
        else:
            await terminal_chat(reactor, options.subOptions)
    elif command in ("mail", "chat"):
        console = Console()
        stdio.StandardIO(console, reactor=reactor)
        try:
            if command == "mail":
                await mail_shell(reactor, options.subOptions, console)
            else:
                await chat(reactor, options.subOptions, console)
        finally:
            # Output still waiting to be written would be lost when the reactor stops.
            await console.close()
    else:
        await one_shot(reactor, options)


def _on_a_terminal():
    """
    Both ends are a terminal, and the asyncio reactor prompt_toolkit needs
    can be had: it is installed here, before anything imports the default one.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    if "twisted.internet.reactor" in sys.modules:  # main() called from a program
        from twisted.internet import reactor

        return reactor.__class__.__name__ == "AsyncioSelectorReactor"
    import asyncio

    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = parse(argv)
    except Failed as e:
        sys.stderr.write("mailsvc-client: %s\n" % (e,))
        raise SystemExit(e.status)
    terminal = options.subCommand in ("mail", "chat") and _on_a_terminal()

    def failed(failure):
        failure.trap(Failed)
        sys.stderr.write("mailsvc-client: %s\n" % (failure.value,))
        raise SystemExit(failure.value.status)

    task.react(
        lambda reactor: defer.ensureDeferred(run(reactor, options, terminal)).addErrback(failed)
    )


if __name__ == "__main__":
    main()

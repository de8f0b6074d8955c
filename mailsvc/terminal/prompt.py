"""
prompt_toolkit's prompt on Twisted's asyncio reactor.

L{TerminalConsole} offers what L{mailsvc.cli.Console} offers to the mail
shell (C{ask}, C{ask_secret}, C{say}), with line editing, a history per kind
of question and completion, plus what only a terminal has: the width, a pager
and an editor. Both run in the one asyncio loop the reactor runs, so a prompt
is a Deferred like any other and nothing blocks.
"""

import asyncio
import os
import shlex
import shutil
import signal
import tempfile

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import get_app_or_none
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import DummyHistory, InMemoryHistory
from prompt_toolkit.renderer import print_formatted_text as write_formatted_text
from prompt_toolkit.shortcuts import CompleteStyle
from prompt_toolkit.styles import Style
from twisted.internet import defer

from mailsvc.terminal import look

STYLE = Style.from_dict({"stamp": "ansibrightblack", "prompt": "bold"})


def prompt(session, message, **options):
    """
    Fire with the line typed at C{session}'s prompt; None at end of input
    (Ctrl-D on an empty line) or on Ctrl-C.
    """
    future = asyncio.ensure_future(session.prompt_async(message, **options))

    def ended(failure):
        failure.trap(EOFError, KeyboardInterrupt)
        return None

    return defer.Deferred.fromFuture(future).addErrback(ended)


def new_session(history=True, **options):
    """A prompt as the client uses them: readline-like completion on Tab."""
    return PromptSession(
        history=InMemoryHistory() if history else DummyHistory(),
        complete_style=CompleteStyle.READLINE_LIKE,
        complete_while_typing=False,
        style=STYLE,
        **options,
    )


def show(fragments):
    """
    Print formatted text above the prompt (or plainly, between prompts).

    Not prompt_toolkit's C{run_in_terminal}: it puts the terminal in cooked
    mode while it prints, and keys pressed meanwhile are echoed over the
    screen, or taken by the terminal (Ctrl-D). Here the prompt is erased, the
    line written and the prompt drawn again in one go, in raw mode: keys
    wait in the terminal until the prompt reads them.
    """
    app = get_app_or_none()
    if app is None or not app.is_running or app.is_done:
        print_formatted_text(FormattedText(fragments), style=STYLE)
        return
    app.renderer.erase()
    write_formatted_text(app.output, FormattedText(fragments + [("", "\n")]), STYLE)
    app.output.flush()
    app.renderer.reset()
    app.invalidate()


class Words(Completer):
    """
    Completion from lists that change: C{choose(words_before, word)} returns
    the candidates for the word under the cursor, given the words before it.
    """

    def __init__(self, choose):
        self.choose = choose

    def get_completions(self, document, complete_event):
        before = document.text_before_cursor
        word = before.split(" ")[-1]
        words = before.split()
        if word:
            words = words[:-1]
        for candidate in self.choose(words, word):
            if candidate.lower().startswith(word.lower()) and candidate != word:
                yield Completion(candidate, start_position=-len(word))


async def run_program(argv, data=None):
    """
    Run C{argv} on the terminal (the pager, the editor), with C{data} on its
    standard input if given; return its exit status, or None if it could not
    be started. Ctrl-C meanwhile is the program's, not ours: our handler is
    a no-op until it ends (a handler, not SIG_IGN, which the program would
    inherit).
    """
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if data is not None else None
        )
        await process.communicate(data)
        return process.returncode
    except OSError:
        return None
    finally:
        signal.signal(signal.SIGINT, previous)


def pager_command(environ=os.environ):
    """C{$PAGER} (split as the shell would), else C{less -R} if there is a
    less, else None: print the text as it is."""
    if "PAGER" in environ:
        return shlex.split(environ["PAGER"]) or None
    less = shutil.which("less")
    return [less, "-R"] if less else None


def editor_command(environ=os.environ):
    """C{$EDITOR} split as the shell would, or None."""
    return shlex.split(environ.get("EDITOR", "")) or None


class TerminalConsole:
    """
    The mail shell's questions on a terminal: one history per kind of
    question (commands, recipients, subjects...), none for passwords.
    """

    def __init__(self):
        self._sessions = {}
        self._secret = new_session(history=False)

    def _session(self, kind):
        if kind not in self._sessions:
            self._sessions[kind] = new_session()
        return self._sessions[kind]

    def ask(self, question="", kind=None, choices=None, default=""):
        """
        Fire with the answer, None at end of input. C{kind} names the history
        to keep it in (the question by default); C{choices(words, word)}
        gives the completions (L{Words}).
        """
        return prompt(
            self._session(kind or question),
            question,
            completer=Words(choices) if choices else None,
            default=default,
        )

    async def ask_secret(self, question):
        return await prompt(self._secret, question, is_password=True)

    def say(self, *lines):
        for line in lines:
            print_formatted_text(line)

    def show_list(self, messages):
        self.say(*look.message_table(messages, self.width()))
        self.say("%d message%s" % (len(messages), "" if len(messages) == 1 else "s"))

    def can_edit(self):
        return editor_command() is not None

    async def edited_body(self):
        """The message written in C{$EDITOR}; None: nothing to send."""
        descriptor, path = tempfile.mkstemp(prefix="mailsvc-", suffix=".txt")
        os.close(descriptor)
        try:
            if not await self.edit(path):
                return None
            with open(path, encoding="utf-8", errors="replace") as f:
                body = f.read().rstrip("\n")
        finally:
            os.unlink(path)
        if not body.strip():
            self.say("The message is empty: nothing sent.")
            return None
        return body

    def width(self):
        return shutil.get_terminal_size().columns

    def height(self):
        return shutil.get_terminal_size().lines

    async def page(self, lines):
        """Show C{lines}, through the pager if they are more than the screen holds."""
        command = pager_command()
        if command is None or len(lines) < self.height():
            self.say(*lines)
            return
        text = "".join(line + "\n" for line in lines).encode("utf-8")
        if await defer.Deferred.fromFuture(asyncio.ensure_future(run_program(command, text))) is None:
            self.say(*lines)

    async def edit(self, path):
        """Open C{path} in C{$EDITOR}; True if it ended well, None without an editor."""
        command = editor_command()
        if command is None:
            return None
        status = await defer.Deferred.fromFuture(
            asyncio.ensure_future(run_program(command + [path]))
        )
        if status is None:
            self.say("error: cannot run the editor %s" % (command[0],))
            return False
        if status != 0:
            self.say("The editor ended with status %d: nothing sent." % status)
            return False
        return True

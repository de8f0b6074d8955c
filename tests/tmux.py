"""
A real pseudo-terminal for the tests: a tmux server of the test's own
(C{tmux -L <socket>}, so nobody else's is touched), driven with send-keys and
read with capture-pane, polled without blocking the reactor until a deadline.
"""

import itertools
import os
import re
import shlex

from twisted.internet import defer, task, utils

from conftest import require

_sockets = itertools.count()


class Terminal:
    """
    One tmux server with a window per program. A shell runs each program and
    prints its exit status when it ends (tmux's own pane_dead_status proved
    unreliable: now and then its server left an ended program a zombie).
    """

    def __init__(self, tmp_path, width=100, height=30):
        self.tmux = require("tmux", "tmux")
        self.socket = "mailsvc-test-%d-%d" % (os.getpid(), next(_sockets))
        self.width, self.height = width, height
        self.config = tmp_path / "tmux.conf"
        # No status line: the pane is the whole window, as a terminal would be.
        self.config.write_text("set -g status off\n")
        self.started = False

    def _run(self, *args):
        from twisted.internet import reactor

        command = [self.tmux, "-u", "-L", self.socket, "-f", str(self.config)] + list(args)
        d = utils.getProcessOutputAndValue(command[0], command[1:], env=os.environ, reactor=reactor)

        def checked(result):
            out, err, code = result
            if code != 0:
                raise RuntimeError("%s failed (%d): %s" % (shlex.join(command), code, err.decode()))
            return out.decode("utf-8", "replace")

        return d.addCallback(checked)

    async def start(self, name, argv, env):
        """Run C{argv} in window C{name}, with C{env} added to the environment."""
        argv = ["sh", "-c", '"$0" "$@"; echo "[exited $?]"; exec cat'] + list(argv)
        settings = []
        for key, value in env.items():
            settings += ["-e", "%s=%s" % (key, value)]
        if not self.started:
            self.started = True
            await self._run(
                "new-session", "-d", "-s", "test", "-n", name,
                "-x", str(self.width), "-y", str(self.height), *settings, shlex.join(argv),
            )
        else:
            await self._run("new-window", "-d", "-t", "test", "-n", name, *settings, shlex.join(argv))

    def keys(self, name, *keys):
        """Keys by tmux's names (Enter, Tab, Up, C-d)."""
        return self._run("send-keys", "-t", "test:" + name, *keys)

    def type(self, name, text):
        """Text typed as it is (no key names)."""
        return self._run("send-keys", "-t", "test:" + name, "-l", text)

    async def line(self, name, text):
        """C{text} typed, then Enter."""
        await self.type(name, text)
        await self.keys(name, "Enter")

    def screen(self, name):
        return self._run("capture-pane", "-p", "-t", "test:" + name)

    async def shows(self, name, pattern, seconds=15):
        """The screen once C{pattern} (a regular expression) is on it."""
        from twisted.internet import reactor

        deadline = reactor.seconds() + seconds
        while True:
            screen = await self.screen(name)
            if re.search(pattern, screen, re.MULTILINE):
                return screen
            if reactor.seconds() > deadline:
                raise AssertionError("%r never showed; the screen:\n%s" % (pattern, screen))
            await task.deferLater(reactor, 0.05)

    async def exit_status(self, name, seconds=15):
        """The program's exit status, once it has ended."""
        screen = await self.shows(name, r"^\[exited \d+\]$", seconds)
        return int(re.findall(r"^\[exited (\d+)\]$", screen, re.MULTILINE)[-1])

    def close(self):
        if self.started:
            return self._run("kill-server").addErrback(lambda failure: None)
        return defer.succeed(None)


def prompt_line(screen, prompt):
    """The last line of C{screen} that begins with C{prompt}: what is typed
    there (capture-pane drops the spaces at the end of a line)."""
    lines = [line for line in screen.splitlines() if (line + " ").startswith(prompt)]
    return lines[-1][len(prompt):] if lines else None

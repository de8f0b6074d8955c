"""
mailsvc-client's profile file, --version, every command's --help and the
exit statuses, as a script sees them (no terminal); and how the terminal
client lays things out (mailsvc.terminal.look), without a terminal.
"""

import pytest
import pytest_twisted

from mailsvc import profile as profiles
from mailsvc.client import ChatEvent, Message
from mailsvc.terminal import look
from test_cli import CLIENT, run

COMMANDS = ["mail", "chat", "send", "count", "list", "read", "delete", "register"]


def write_profile(tmp_path, text, mode=0o600):
    path = tmp_path / "config" / "mailsvc" / "client.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def environ(tmp_path, **more):
    return dict({"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)}, **more)


# The profile, as a library


def test_the_profile_is_under_xdg_config_home_or_home():
    assert profiles.path({"XDG_CONFIG_HOME": "/x"}) == "/x/mailsvc/client.toml"
    assert profiles.path({"XDG_CONFIG_HOME": "", "HOME": "/h"}) == "/h/.config/mailsvc/client.toml"


def test_variables_come_before_the_profile(tmp_path):
    write_profile(tmp_path, '[default]\nhost = "a.example"\nuser = "alice"\n'
                            '[work]\nhost = "b.example"\nmail_port = 9025\n')
    assert profiles.load(None, environ(tmp_path)).get("host") == "a.example"
    work = profiles.load("work", environ(tmp_path))
    assert (work.get("host"), work.get("mail_port"), work.get("user")) == ("b.example", 9025, None)
    chosen = profiles.load(None, environ(tmp_path, MAILSVC_PROFILE="work", MAILSVC_HOST="c"))
    assert (chosen.get("host"), chosen.get("mail_port")) == ("c", 9025)


def test_no_file_is_no_profile_unless_one_is_named(tmp_path):
    assert profiles.load(None, environ(tmp_path)).get("host") is None
    with pytest.raises(profiles.ProfileError, match="no profile work"):
        profiles.load("work", environ(tmp_path))


@pytest.mark.parametrize(
    "text, error",
    [
        ('[default]\nhots = "x"\n', r"unknown setting hots"),
        ('[default]\nmail_port = "x"\n', r"mail_port must be a number"),
        ('[default\n', r"is not TOML"),
        ('[default]\nhost = "x"\n', r"no profile \[work\] in .* \(default\)"),
    ],
)
def test_a_profile_that_cannot_be_used_says_why(tmp_path, text, error):
    write_profile(tmp_path, text)
    with pytest.raises(profiles.ProfileError, match=error):
        profiles.load("work" if "work" in error else None, environ(tmp_path))


def test_a_password_is_read_only_from_a_file_nobody_else_may_read(tmp_path):
    text = '[default]\nuser = "alice"\npassword = "wonderland"\n'
    write_profile(tmp_path, text, 0o600)
    private = profiles.load(None, environ(tmp_path))
    assert private.password_for("alice") == "wonderland" and private.warnings == []
    # Never one account's password for another.
    assert private.password_for("bob") is None
    assert profiles.load(None, environ(tmp_path, MAILSVC_PASSWORD="pw")).password_for("bob") == "pw"
    for mode in (0o640, 0o604, 0o644):
        path = write_profile(tmp_path, text, mode)
        shared = profiles.load(None, environ(tmp_path))
        assert shared.password_for("alice") is None
        assert shared.warnings == [
            "%s may be read by others (mode %04o): its password is ignored; chmod 600 %s"
            % (path, mode, path)
        ]


# The command


@pytest_twisted.ensureDeferred
async def test_version_is_mailsvc_then_twisted():
    import twisted

    out, err, status = await run("--version")
    assert status == 0 and err == ""
    assert out.splitlines() == [
        "mailsvc-client (mailsvc) 0.1.0",
        "Twisted %s" % (twisted.__version__,),
    ]
    assert (await run("chat", "--version"))[0] == out


@pytest_twisted.ensureDeferred
async def test_every_command_has_help():
    out, _, status = await run("--help")
    assert status == 0
    for command in COMMANDS:
        assert "  %s " % command in out
        out_c, err_c, status_c = await run(command, "--help")
        assert (status_c, err_c) == (0, "")
        assert out_c.startswith("mailsvc-client [--profile NAME] %s" % command)
        assert "--host=" in out_c and "--connect=" in out_c


@pytest_twisted.ensureDeferred
async def test_the_exit_statuses(mailsvc_server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    mail = ["--connect", mailsvc_server.mail]
    assert (await run("register", "--user", "alice", *mail))[2] == 0
    _, err, status = await run("read", "--user", "alice", *mail, "9")
    assert status == 1 and err == "mailsvc-client: no such message: 9\n"
    _, err, status = await run("frob")
    assert status == 2 and err.startswith("mailsvc-client: Unknown command: frob")
    _, err, status = await run("count", "--user", "alice", "--connect", "tcp:127.0.0.1:1")
    assert status == 3 and "cannot connect" in err
    _, err, status = await run("--profile", "nope", "count", "--user", "alice", *mail)
    assert status == 2 and err.startswith("mailsvc-client: no profile nope")
    write_profile(tmp_path, "[default]\nport = 1\n")
    _, err, status = await run("count", "--user", "alice", *mail)
    assert status == 2 and "unknown setting port" in err


@pytest_twisted.ensureDeferred
async def test_one_shot_commands_use_the_profile(mailsvc_server, tmp_path, monkeypatch):
    await run("register", "--user", "alice", "--connect", mailsvc_server.mail, password="wonder")
    path = write_profile(
        tmp_path,
        '[work]\nhost = "127.0.0.1"\nmail_port = %d\nuser = "alice"\npassword = "wonder"\n'
        % mailsvc_server.mail_port,
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert await run("--profile", "work", "count", password=None) == ("0\n", "", 0)
    monkeypatch.setenv("MAILSVC_PROFILE", "work")
    assert await run("count", password=None) == ("0\n", "", 0)
    # An option or a variable wins over the profile.
    _, err, status = await run("count", "--port", "1", password=None)
    assert status == 3 and "tcp:127.0.0.1:1" in err
    _, err, status = await run("count", password="wrong")
    assert status == 1 and "wrong user name or password" in err
    # Others may read it: no password from it, and a warning (then no
    # terminal to ask on: setsid leaves the command without one).
    path.chmod(0o644)
    out, err, status = await run(
        "count", password=None, stdin="", command=("/usr/bin/setsid", CLIENT)
    )
    assert status == 2
    assert err.splitlines() == [
        "mailsvc-client: warning: %s may be read by others (mode 0644): its password is "
        "ignored; chmod 600 %s" % (path, path),
        "mailsvc-client: no password: set MAILSVC_PASSWORD or run on a terminal",
    ]


# How things look


def test_nicknames_keep_their_colour():
    assert look.nick_colour("alice") == look.nick_colour("Alice")
    assert len({look.nick_colour(n) for n in ("alice", "bob", "carol", "dave", "erin")}) > 1


def test_a_mention_is_a_word_of_its_own():
    assert look.mentions("hi bob, lunch?", "bob")
    assert look.mentions("BOB: lunch?", "bob")
    assert not look.mentions("bobby and bob_2", "bob")


def test_chat_lines_have_a_time_stamp_and_a_look_per_kind():
    def text(fragments):
        return "".join(t for _, t in fragments)

    now = 1_700_000_000
    stamp = look.stamp(now)
    assert text(look.chat_line(ChatEvent("message", "hi", "bob"), "alice", now)) == stamp + " <bob> hi"
    assert text(look.chat_line(ChatEvent("private", "psst", "bob"), "alice", now)) == (
        stamp + " *bob* psst"
    )
    assert text(look.chat_line(ChatEvent("notice", "bob joined"), "alice", now)) == (
        stamp + " --> bob joined"
    )
    shutdown = ChatEvent("shutdown", "Server will shut down in 5 seconds", seconds=5)
    assert text(look.chat_line(shutdown, "alice", now)).endswith(
        "*** the server is shutting down in 5 seconds"
    )
    mention = look.chat_line(ChatEvent("message", "alice: hi", "bob"), "alice", now)
    assert mention[-1] == ("bold ansiyellow", "alice: hi")


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_the_mail_list_fits_the_width(width):
    messages = [
        Message(i, "a-rather-long-sender-name", "2026-11-21T14:41:49Z", "Subject %d " % i * 9)
        for i in (1, 22, 333)
    ]
    lines = look.message_table(messages, width)
    assert lines[0].split() == ["ID", "FROM", "DATE", "SUBJECT"]
    assert all(len(line) <= width for line in lines)
    # Aligned: every row's date starts in the header's DATE column.
    column = lines[0].index("DATE")
    assert all(line[column : column + 4] == "2026" for line in lines[1:])

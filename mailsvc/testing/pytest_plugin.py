"""
pytest fixtures for a real mailsvc (registered as a pytest11 plugin; they
need pytest-twisted, which runs the reactor):

  mailsvc_server   a running L{mailsvc.testing.MailsvcServer}, stopped after
                   the test; @pytest.mark.mailsvc(history=0, ...) passes
                   options to it
  mail_client      a MailClient logged in as the user of
                   @pytest.mark.mailsvc_user(name, password) (default
                   alice/password), registered first if need be
  chat_client      a ChatClient joined as @pytest.mark.mailsvc_nick(nick[,
                   password]) (default "guest")
  mailsvc_process  starts C{twistd -n mailsvc} subprocesses: a function of the
                   extra arguments (fresh=True: in a directory of its own,
                   else in tmp_path, so a second one reuses the database;
                   db=: a file name, or a URL that several share);
                   each is stopped and checked for logged errors after the
                   test
"""

import pytest

TIMEOUT = 30


def pytest_configure(config):
    for line in (
        "mailsvc(**options): options of the mailsvc_server fixture",
        "mailsvc_user(name, password='password'): who the mail_client fixture logs in as",
        "mailsvc_nick(nick, password=None): who the chat_client fixture joins as",
    ):
        config.addinivalue_line("markers", line)


def _wait(d):
    """Block the test on C{d} (pytest-twisted), for at most TIMEOUT seconds."""
    import pytest_twisted
    from twisted.internet import defer, reactor

    return pytest_twisted.blockon(defer.ensureDeferred(d).addTimeout(TIMEOUT, reactor))


@pytest.fixture
def mailsvc_server(request):
    from mailsvc.testing import start_server

    marker = request.node.get_closest_marker("mailsvc")
    options = dict(marker.kwargs) if marker else {}
    server = _wait(start_server(**options))
    yield server
    _wait(server.stop())


def _who(request, marker_name, names, defaults):
    """A marker's arguments, by position or by name, over the defaults."""
    marker = request.node.get_closest_marker(marker_name)
    values = dict(zip(names, defaults))
    if marker is not None:
        values.update(zip(names, marker.args))
        values.update(marker.kwargs)
    return [values[name] for name in names]


@pytest.fixture
def mail_client(mailsvc_server, request):
    name, password = _who(request, "mailsvc_user", ("name", "password"), ("alice", "password"))
    _wait(mailsvc_server.ensure_user(name, password))
    return _wait(mailsvc_server.connect_mail(user=name, password=password))


@pytest.fixture
def chat_client(mailsvc_server, request):
    nick, password = _who(request, "mailsvc_nick", ("nick", "password"), ("guest", None))
    return _wait(mailsvc_server.connect_chat(nick, password))


@pytest.fixture
def mailsvc_process(tmp_path):
    from mailsvc.testing.process import TwistdServer

    servers = []

    def start(*extra, fresh=False, db="mailsvc.sqlite"):
        directory = tmp_path
        if fresh:
            directory = tmp_path / ("server%d" % (len(servers) + 1,))
            directory.mkdir()
        server = TwistdServer(directory, db=db, extra=extra)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()
    problems = [line for server in servers for line in server.problems()]
    if problems:
        pytest.fail("the server logged errors:\n" + "\n".join(problems))

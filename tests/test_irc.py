"""The IRC front over StringTransport, against a synchronous shared service."""

import base64

import pytest

from mailsvc.core.events import Shutdown
from mailsvc.fronts.chat import ChatFactory
from mailsvc.fronts.irc import IRCFactory, motd_lines
from conftest import fired
from wire import Wire

S = "mailsvc"


@pytest.fixture
def irc(service, clock):
    return IRCFactory(
        service,
        clock=clock,
        topic="the topic",
        motd=["line one", "line two"],
        ping_interval=100,
        ping_timeout=10,
        registration_timeout=30,
        max_sendq=4096,
        flood_rate=1e6,
        flood_burst=1000,
    )


@pytest.fixture
def chat(service, clock):
    return ChatFactory(service, clock=clock, flood_rate=1e6, flood_burst=1000)


def registered(irc, nick, *before):
    """An IRC connection through NICK/USER, the welcome read."""
    wire = Wire(irc)
    for line in before:
        wire(line)
    wire("NICK " + nick)
    welcome = wire("USER %s 0 * :Real %s" % (nick, nick))
    assert welcome[0].startswith(":%s 001 %s " % (S, nick)), welcome
    return wire


def joined(irc, nick, *before):
    wire = registered(irc, nick, *before)
    wire("JOIN #chat")
    return wire


def line_user(chat, nick):
    wire = Wire(chat)
    assert wire.replies() == ["HELLO"]
    assert wire("NICK " + nick)[0] == "READY"
    return wire


def test_registration_as_modern_clients_do_it(irc):
    wire = Wire(irc)
    assert wire("CAP LS 302") == [":%s CAP * LS :echo-message message-tags sasl=PLAIN server-time" % S]
    assert wire("NICK alice") == []
    # Registration waits for CAP END.
    assert wire("USER alice 0 * :Alice Liddell") == []
    assert wire("CAP REQ :server-time message-tags") == [
        ":%s CAP * ACK :server-time message-tags" % S
    ]
    assert wire("CAP REQ :frobnicate") == [":%s CAP * NAK :frobnicate" % S]
    welcome = wire("CAP END")
    codes = [line.split()[1] for line in welcome]
    assert codes == ["001", "002", "003", "004", "005", "375", "372", "372", "376"]
    assert welcome[0] == ":%s 001 alice :Welcome to the mailsvc IRC network alice!alice@127.0.0.1" % S
    isupport = welcome[4]
    for token in ("CASEMAPPING=ascii", "CHANTYPES=#", "NICKLEN=32", "CHANNELLEN=50", "NETWORK=mailsvc"):
        assert token in isupport.split()
    assert welcome[6] == ":%s 372 alice :- line one" % S
    assert wire("CAP LIST") == [":%s CAP alice LIST :message-tags server-time" % S]


def test_cap_ls_without_version_has_no_values_and_no_motd_is_422(service, clock):
    factory = IRCFactory(service, clock=clock)
    wire = Wire(factory)
    assert wire("CAP LS") == [":%s CAP * LS :echo-message message-tags sasl server-time" % S]
    wire("CAP END")
    wire("NICK bob")
    welcome = wire("USER bob 0 * :Bob")
    assert welcome[-1] == ":%s 422 bob :MOTD File is missing" % S


def test_motd_option_text_or_file(tmp_path):
    assert motd_lines("") == []
    assert motd_lines("one\\ntwo") == ["one", "two"]
    path = tmp_path / "motd"
    path.write_bytes(b"hello\r\nw\xc3\xb6rld\n")
    assert motd_lines("@%s" % (path,)) == ["hello", "wörld"]


def test_commands_before_registration_get_451_and_unknown_ones_421(irc):
    wire = Wire(irc)
    assert wire("JOIN #chat") == [":%s 451 * :You have not registered" % S]
    assert wire("PING :abc") == [":%s PONG %s :abc" % (S, S)]
    alice = registered(irc, "alice")
    assert alice("FROB x") == [":%s 421 alice FROB :Unknown command" % S]
    assert alice("TAGMSG #chat") == [":%s 421 alice TAGMSG :Unknown command" % S]
    assert alice("USER a 0 * :b") == [":%s 462 alice :You may not reregister" % S]


def test_nick_errors(irc):
    registered(irc, "alice")
    wire = Wire(irc)
    wire("USER x 0 * :x")
    assert wire("NICK bad*nick") == [
        ":%s 432 * bad*nick :Erroneous nickname: invalid nickname: use 1 to 32 letters,"
        " digits, _ or -" % S
    ]
    assert wire("NICK ALICE") == [":%s 433 * ALICE :Nickname is already in use" % S]
    # The client tries another, as irssi and WeeChat do.
    assert wire("NICK alice_")[0].startswith(":%s 001 alice_ " % S)


def test_reserved_nick_needs_pass_or_sasl(irc, service, clock):
    fired(service.register("carol", "secret"))
    wire = Wire(irc)
    wire("USER carol 0 * :Carol")
    assert wire("NICK carol") == [
        ":%s 433 * carol :Nickname belongs to a mail account: send PASS <password> before NICK,"
        " or log in with SASL" % S
    ]
    wire("PASS wrong")
    assert wire("NICK carol") == [":%s 464 * :Password incorrect" % S]
    wire("PASS secret")
    welcome = wire("NICK Carol")
    # The room's spelling: the account's.
    assert welcome[0].startswith(":%s 001 carol " % S)
    assert service.room.participants()[0].account == "carol"


def test_sasl_plain(irc, service):
    fired(service.register("carol", "secret"))
    wire = Wire(irc)
    wire("CAP LS 302")
    wire("NICK carol")
    wire("USER carol 0 * :Carol")
    assert wire("CAP REQ :sasl") == [":%s CAP * ACK :sasl" % S]
    assert wire("AUTHENTICATE PLAIN") == ["AUTHENTICATE +"]
    bad = base64.b64encode(b"carol\0carol\0wrong").decode()
    assert wire("AUTHENTICATE " + bad) == [":%s 904 carol :SASL authentication failed" % S]
    assert wire("AUTHENTICATE SCRAM-SHA-256") == [
        ":%s 908 carol PLAIN :are available SASL mechanisms" % S,
        ":%s 904 carol :SASL authentication failed" % S,
    ]
    wire("AUTHENTICATE PLAIN")
    good = base64.b64encode(b"\0carol\0secret").decode()
    assert wire("AUTHENTICATE " + good) == [
        ":%s 900 carol carol!carol@127.0.0.1 carol :You are now logged in as carol" % S,
        ":%s 903 carol :SASL authentication successful" % S,
    ]
    assert wire("CAP END")[0].startswith(":%s 001 carol " % S)


def test_join_topic_names_and_other_channels(irc, chat):
    line_user(chat, "lena")
    alice = registered(irc, "alice")
    assert alice("JOIN #other,#CHAT") == [
        ":%s 403 alice #other :No such channel" % S,
        ":alice!alice@%s JOIN #chat" % S,
        ":%s 332 alice #chat :the topic" % S,
        ":%s 353 alice = #chat :alice lena" % S,
        ":%s 366 alice #chat :End of /NAMES list" % S,
    ]
    assert alice("JOIN #chat") == []
    assert alice("TOPIC #chat") == [":%s 332 alice #chat :the topic" % S]
    assert alice("TOPIC #chat :new") == [":%s 482 alice #chat :You're not channel operator" % S]
    assert alice("MODE #chat") == [":%s 324 alice #chat :+nt" % S]
    assert alice("MODE #chat b") == [":%s 368 alice #chat :End of channel ban list" % S]
    assert alice("MODE alice") == [":%s 221 alice :+" % S]
    assert alice("MODE alice +i") == []
    assert alice("NAMES #chat")[-1] == ":%s 366 alice #chat :End of /NAMES list" % S
    assert alice("WHO #chat") == [
        ":%s 352 alice #chat alice %s %s alice H :0 alice" % (S, S, S),
        ":%s 352 alice #chat lena %s %s lena H :0 lena" % (S, S, S),
        ":%s 315 alice #chat :End of /WHO list" % S,
    ]
    assert alice("WHOIS lena")[0] == ":%s 311 alice lena lena %s * :lena" % (S, S)
    assert alice("WHOIS nobody") == [
        ":%s 401 alice nobody :No such nick/channel" % S,
        ":%s 318 alice nobody :End of /WHOIS list" % S,
    ]
    assert alice("ISON lena nobody ALICE") == [":%s 303 alice :lena alice" % S]
    assert alice("USERHOST lena") == [":%s 302 alice :lena=+lena@%s" % (S, S)]
    assert alice("AWAY :lunch") == [":%s 306 alice :You have been marked as being away" % S]
    assert alice("AWAY") == [":%s 305 alice :You are no longer marked as being away" % S]


def test_talk_across_fronts_both_ways(irc, chat):
    lena = line_user(chat, "lena")
    alice = registered(irc, "alice")
    assert lena.replies() == ["* alice joined"]
    # Not in the channel yet: the channel's traffic waits for JOIN.
    lena("before the join")
    assert alice.replies() == []
    alice("JOIN #chat")
    assert alice("PRIVMSG #chat :hi from IRC, grüß dich") == []
    assert lena.replies() == ["alice: hi from IRC, grüß dich"]
    lena("hi from the line chat")
    assert alice.replies() == [":lena!lena@%s PRIVMSG #chat :hi from the line chat" % S]
    line_user(chat, "mo")
    assert alice.replies() == [":mo!mo@%s JOIN #chat" % S]
    lena("BYE")
    lena.protocol.connectionLost(None)
    assert alice.replies() == [":lena!lena@%s PART #chat :left" % S]


def test_actions_cross_fronts_as_actions(irc, chat):
    """irssi's /me is a CTCP ACTION; the line chat's /me is the same action."""
    lena = line_user(chat, "lena")
    alice = registered(irc, "alice")
    alice("JOIN #chat")
    lena.replies()
    assert alice("PRIVMSG #chat :\x01ACTION waves\x01") == []
    assert lena.replies() == ["* alice waves"]
    assert lena("/me waves back") == []
    assert alice.replies() == [":lena!lena@%s PRIVMSG #chat :\x01ACTION waves back\x01" % S]
    assert lena("/me") == ["* error: usage: /me <text>"]


def test_history_on_join_with_and_without_server_time(irc, chat, clock):
    lena = line_user(chat, "lena")
    clock.advance(0.25)
    lena("earlier")
    plain = joined(irc, "plain")
    # JOIN's own replies, then the history.
    tagged = Wire(irc)
    tagged("CAP LS 302")
    tagged("CAP REQ server-time")
    tagged("NICK tagged")
    tagged("USER tagged 0 * :T")
    tagged("CAP END")
    assert tagged("JOIN #chat")[-1] == (
        "@time=2023-11-14T22:13:20.250Z :lena!lena@%s PRIVMSG #chat :earlier" % S
    )
    plain.protocol.connectionLost(None)
    plain = registered(irc, "plain2")
    assert plain("JOIN #chat")[-1] == ":lena!lena@%s PRIVMSG #chat :[history] earlier" % S
    tagged.replies()
    clock.advance(1)
    lena("now")
    assert tagged.replies() == [
        "@time=2023-11-14T22:13:21.250Z :lena!lena@%s PRIVMSG #chat :now" % S
    ]
    # server-time cannot change once in the room (the room groups by format).
    assert tagged("CAP REQ -server-time") == [":%s CAP tagged NAK :-server-time" % S]


def test_echo_message(irc, chat):
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice", "CAP REQ echo-message", "CAP END")
    assert alice("PRIVMSG #chat :me too") == [":alice!alice@%s PRIVMSG #chat :me too" % S]
    assert alice("PRIVMSG lena :psst") == [":alice!alice@%s PRIVMSG lena :psst" % S]
    assert lena.replies()[-2:] == ["alice: me too", "*alice* psst"]


def test_private_messages_both_ways_and_errors(irc, chat):
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    assert alice("PRIVMSG lena :psst") == []
    assert lena.replies()[-1] == "*alice* psst"
    lena("/msg alice back at you")
    assert alice.replies() == [":lena!lena@%s PRIVMSG alice :back at you" % S]
    assert alice("PRIVMSG nobody :hi") == [
        ":%s 401 alice nobody :No such nick/channel (a mailbox takes messages only from a"
        " registered nickname)" % S
    ]
    assert alice("PRIVMSG #other :hi") == [":%s 403 alice #other :No such channel" % S]
    assert alice("PRIVMSG #chat") == [":%s 412 alice :No text to send" % S]
    assert alice("NOTICE nobody :hi") == []
    assert alice("NOTICE #chat :a notice") == []
    assert lena.replies() == ["alice: a notice"]


def test_offline_privmsg_goes_to_the_mailbox_and_new_mail_notice(irc, service):
    fired(service.register("carol", "secret"))
    fired(service.register("dave", "pw"))
    carol = joined(irc, "carol", "PASS secret")
    assert carol("PRIVMSG dave :see you") == [
        ":%s NOTICE carol :dave is not here: your message is in their mailbox" % S
    ]
    [message] = fired(service.storage.headers("dave"))
    assert message.sender == "carol"
    dave = joined(irc, "dave", "PASS pw")
    carol.replies()
    assert dave("PRIVMSG carol :got it") == []
    fired(service.deliver("carol", "dave", "lunch?", "at noon"))
    assert carol.replies()[-1] == ":%s NOTICE carol :new mail from dave: lunch?" % S


def test_nick_change(irc, chat, service):
    fired(service.register("carol", "secret"))
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    bob = joined(irc, "bob")
    lena.replies()
    alice.replies()
    assert bob("NICK robert") == [":bob!bob@%s NICK :robert" % S]
    assert alice.replies() == [":bob!bob@%s NICK :robert" % S]
    assert lena.replies() == ["* bob is now known as robert"]
    assert bob("NICK lena") == [":%s 433 robert lena :Nickname is already in use" % S]
    assert bob("NICK carol")[0].startswith(":%s 433 robert carol :Nickname belongs" % S)
    assert bob("NICK Robert") == [":robert!robert@%s NICK :Robert" % S]
    assert lena.replies() == ["* robert is now known as Robert"]


def test_nick_change_of_case_alone(irc, chat, service):
    """As IRC servers do: NICK Bob when you are bob is a nick change like any
    other (the NICK line to everyone, the new spelling wherever nicks are
    listed), and it keeps the nickname it holds."""
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    bob = joined(irc, "bob")
    lena.replies()
    alice.replies()
    assert bob("NICK Bob") == [":bob!bob@%s NICK :Bob" % S]
    assert alice.replies() == [":bob!bob@%s NICK :Bob" % S]
    assert lena.replies() == ["* bob is now known as Bob"]
    assert bob("NICK Bob") == []
    assert bob("NAMES #chat")[0] == ":%s 353 Bob = #chat :Bob alice lena" % S
    assert bob("ISON bob") == [":%s 303 Bob :Bob" % S]
    assert alice("WHOIS bob")[0] == ":%s 311 alice Bob Bob %s * :Bob" % (S, S)
    assert lena("/who") == ["* here: Bob, alice, lena"]
    # Still the one who holds it: nobody else may take it, and /msg reaches it.
    other = Wire(irc)
    other("USER other 0 * :other")
    assert other("NICK BOB") == [":%s 433 * BOB :Nickname is already in use" % S]
    lena("/msg bob hi")
    assert bob.replies() == [":lena!lena@%s PRIVMSG Bob :hi" % S]
    # And back, as often as it likes; on leaving, the nickname is free again.
    assert bob("NICK bob") == [":Bob!Bob@%s NICK :bob" % S]
    bob("QUIT")
    bob.protocol.connectionLost(None)
    assert lena.replies()[-1] == "* bob left"
    assert registered(irc, "BOB")


def test_a_mail_account_keeps_its_spelling(irc, chat, service):
    """A mail account's nickname is spelt as the account: NICK CAROL from
    carol changes nothing, and tells nobody."""
    fired(service.register("carol", "secret"))
    lena = line_user(chat, "lena")
    carol = joined(irc, "carol", "PASS secret")
    lena.replies()
    assert carol("NICK CAROL") == []
    assert lena.replies() == []
    assert carol("NAMES #chat")[0] == ":%s 353 carol = #chat :carol lena" % S


def test_part_leaves_the_room_and_join_comes_back(irc, chat):
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    lena.replies()
    assert alice("PART #chat :bye") == [":alice!alice@%s PART #chat :bye" % S]
    assert lena.replies() == ["* alice left"]
    lena("not for alice")
    assert alice.replies() == []
    assert alice("PRIVMSG #chat :hi") == [":%s 404 alice #chat :Cannot send to channel" % S]
    assert alice("JOIN #chat")[0] == ":alice!alice@%s JOIN #chat" % S
    assert lena.replies() == ["* alice joined"]


def test_quit(irc, chat):
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    lena.replies()
    assert alice("QUIT :gone") == ["ERROR :Closing link: alice[127.0.0.1] (Quit: gone)"]
    assert alice.transport.disconnecting
    alice.protocol.connectionLost(None)
    assert lena.replies() == ["* alice left"]


def test_input_split_on_bytes_and_bad_utf8_replaced(irc, chat):
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    data = "PRIVMSG #chat :snow ☃ man\r\n".encode("utf-8")
    cut = data.index("☃".encode("utf-8")) + 1
    assert alice.feed(data[:cut]) == []
    assert alice.feed(data[cut:]) == []
    assert lena.replies()[-1] == "alice: snow ☃ man"
    assert alice.feed(b"PRIVMSG #chat :bad \xff\xfe bytes\n") == []
    assert lena.replies() == ["alice: bad \ufffd\ufffd bytes"]
    assert not alice.transport.disconnecting


def test_long_lines_get_417_and_the_next_line_is_read(irc, chat):
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    assert alice("PRIVMSG #chat :" + "x" * 600) == [":%s 417 alice :Input line was too long" % S]
    # Tags do not count against the 512 bytes...
    assert alice("@+draft/x=" + "y" * 1000 + " PRIVMSG #chat :tagged") == []
    # ... up to their own limit; and far beyond every limit, still an answer.
    assert alice.feed(b"PRIVMSG #chat :" + b"z" * 20000 + b"\r\nPRIVMSG #chat :after\r\n") == [
        ":%s 417 alice :Input line was too long" % S
    ]
    assert lena.replies()[-2:] == ["alice: tagged", "alice: after"]
    assert not alice.transport.disconnecting


def test_long_line_chat_text_is_cut_into_irc_sized_lines(irc, chat):
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    text = "é" * 1000
    lena(text)
    lines = alice.replies()
    assert all(len(line.encode("utf-8")) + 2 <= 512 for line in lines)
    head = ":lena!lena@%s PRIVMSG #chat :" % S
    assert "".join(line[len(head):] for line in lines) == text


def test_ping_pong_and_idle_clients_dropped(irc, clock):
    alice = joined(irc, "alice")
    assert alice("PING :LAG1234") == [":%s PONG %s :LAG1234" % (S, S)]
    clock.advance(99)
    assert alice.replies() == []
    clock.advance(1)
    assert alice.replies() == ["PING :%s" % S]
    alice("PONG :%s" % S)
    clock.advance(99)
    assert alice.replies() == []
    clock.advance(1)
    assert alice.replies() == ["PING :%s" % S]
    clock.advance(10)
    assert alice.replies() == ["ERROR :Closing link: alice[127.0.0.1] (Ping timeout: 10 seconds)"]
    assert alice.transport.disconnecting


def test_registration_deadline(irc, clock):
    wire = Wire(irc)
    wire("NICK slow")
    clock.advance(30)
    assert wire.replies() == ["ERROR :Closing link: slow[127.0.0.1] (Registration timed out)"]
    assert wire.transport.disconnecting


def test_shutdown_notice_then_error(irc, clock):
    alice = joined(irc, "alice")
    irc.announce_shutdown(Shutdown(5))
    assert alice.replies() == [":%s NOTICE alice :Server will shut down in 5 seconds" % S]
    d = irc.closeAll(clock)
    assert alice.replies() == ["ERROR :Closing link: alice[127.0.0.1] (Server shutting down)"]
    alice.protocol.connectionLost(None)
    fired(d)


def test_flood_control_as_on_the_line_chat(service, clock, chat):
    factory = IRCFactory(service, clock=clock, flood_rate=1, flood_burst=3)
    lena = line_user(chat, "lena")
    alice = joined(factory, "alice")  # JOIN counts
    lena.replies()
    # PING and PONG do not.
    alice("PING :x")
    alice("PRIVMSG #chat :1")
    alice("PRIVMSG #chat :2")
    assert alice("PRIVMSG #chat :3") == [
        ":%s NOTICE alice :you are sending too fast; slow down (at most 1 line a second)" % S
    ]
    assert lena.replies() == ["alice: 1", "alice: 2"]
    alice("PRIVMSG #chat :4")
    alice("PRIVMSG #chat :5")
    assert alice("PRIVMSG #chat :6") == ["ERROR :Closing link: alice[127.0.0.1] (Excess Flood)"]
    assert alice.transport.disconnecting


def test_send_queue_limit(irc, chat, logged_errors):
    lena = line_user(chat, "lena")
    alice = joined(irc, "alice")
    alice.protocol.output.pauseProducing()  # alice's client stops reading
    for n in range(100):
        lena("message %d %s" % (n, "x" * 50))
    assert alice.transport.disconnected or alice.transport.disconnecting


def test_chat_log_records_irc_traffic(service, clock, tmp_path):
    from mailsvc.core.chatlog import ChatLog
    from mailsvc.core.room import ChatRoom
    from mailsvc.core.service import SharedService

    log = ChatLog(str(tmp_path / "chat.log"), clock)
    log.startService()
    shared = SharedService(service.storage, service.passwords, clock, ChatRoom(log))
    factory = IRCFactory(shared, clock=clock)
    alice = joined(factory, "alice")
    alice("PRIVMSG #chat :logged")
    alice("NICK alicia")
    alice.protocol.connectionLost(None)
    log.stopService()
    text = (tmp_path / "chat.log").read_text()
    assert "alice joined from 127.0.0.1:50000" in text
    assert "alice: logged" in text
    assert "alice is now known as alicia" in text
    assert "alicia left" in text

"""
The seams of mailsvc: what a store, a bus, a presence, a room participant and
a front must provide. The service depends on these, never on a backend.
"""

from zope.interface import Attribute, Interface


class IMailStorage(Interface):
    """
    Durable state, and a child service of the process (it starts first and
    stops last). Every method returns a Deferred that fires only after its
    change is committed.
    """

    shared = Attribute(
        "Whether other processes may change the store (several nodes on one"
        " database): then what is read from it may not be kept in memory."
    )

    def add_account(name, password_hash, now):
        """Create an account; fire with its name. L{errors.NameTaken}."""

    def account(name):
        """Fire with C{(canonical name, password hash)}, or None."""

    def add_session(token_hash, account, now):
        """Record a session of C{account}."""

    def session_account(token_hash):
        """Fire with C{(account, last used)} of a session, or None."""

    def touch_session(token_hash, now):
        """Record that a session was used at C{now}."""

    def expire_sessions(before):
        """Forget sessions last used before C{before}; fire with how many."""

    def remove_session(token_hash):
        """Forget a session and what it staged; fire with whether it existed."""

    def stage(token_hash, text, now):
        """Stage C{text} in a session. L{errors.TooManyStaged}."""

    def deliver_staged(token_hash, sender, recipient, now):
        """
        Move the session's most recent staged text into C{recipient}'s mailbox;
        fire with the new message id. L{errors.NothingStaged},
        L{errors.UnknownUser} (the text stays staged).
        """

    def deliver(recipient, sender, subject, body, now, raw=None):
        """
        Put a message in a mailbox; fire with its id (ids are never reused).
        C{raw}: the message's RFC 5322 source (bytes), kept as it is, when it
        has one; C{subject} and C{body} are then what the mail port shows of
        it. L{errors.UnknownUser}, L{errors.MailboxFull}.
        """

    def deliver_all(recipients, sender, subject, body, now, raw=None):
        """
        Put one message in each of several mailboxes, all or none; fire with
        the new ids, in the order of C{recipients}. L{errors.UnknownUser},
        L{errors.MailboxFull} (then no mailbox has it).
        """

    def messages(account):
        """Fire with a mailbox's L{mailsvc.store.Message}s, oldest first, with
        their bodies and sources."""

    def sizes(account, measure):
        """
        Fire with C{[(id, octets), ...]} for a mailbox's messages, oldest
        first, without holding their bodies: a source's length for a message
        that has one (without reading it), else C{measure(message)}, given a
        L{mailsvc.store.Message} with its body, one message at a time.
        """

    def delete_ids(account, message_ids):
        """Delete those of C{message_ids} still in the mailbox; fire with how many."""

    def count(account):
        """Fire with the number of messages in a mailbox."""

    def extent(account, sender=None):
        """
        Fire with C{(how many, newest id or None)} of a mailbox's messages
        (only those from C{sender}, compared without case, if given), read
        together: what a paged listing (L{headers}) announces and where it ends.
        """

    def headers(account, sender=None, after=None, limit=None):
        """
        Fire with a mailbox's L{mailsvc.store.Message}s, oldest first, without
        bodies: only those from C{sender} (without case) if given, only those
        with an id above C{after} if given, at most C{limit} if given. A
        listing reads a page at a time: C{after} the last id of the page before.
        """

    def message(account, message_id=None):
        """
        Fire with one L{mailsvc.store.Message}: C{message_id}, or the oldest.
        L{errors.NoSuchMessage}, L{errors.EmptyMailbox}.
        """

    def delete(account, message_id=None):
        """Delete C{message_id}, or the oldest; fire with the id deleted."""

    def delete_subject(account, subject):
        """Delete every message with exactly this subject; fire with how many."""

    def summary():
        """Fire with counts and sizes: a dict, never passwords or bodies."""

    def failures(keys):
        """Fire with C{{key: (failures, last failure)}} of the login throttle's
        C{keys} that have failures recorded."""

    def record_failure(key, now, forget_after):
        """Count a failed login for C{key} at C{now} (afresh if its last one is
        older than C{forget_after} seconds); fire with its failures now."""

    def forgive(key):
        """Forget C{key}'s failures."""


class IBus(Interface):
    """
    Carries room events and cache invalidations to every subscriber of every
    node. The in-process bus calls subscribers synchronously, in order.
    """

    def publish(message):
        """Hand C{message} (a L{mailsvc.core.events.Event}) to every subscriber."""

    def subscribe(callback):
        """Call C{callback(message)} for each message; return a callable that
        ends the subscription."""


class IPresence(Interface):
    """Who holds which nickname. A claim can fail; across nodes it is a lease."""

    def claim(nick):
        """Fire with None once C{nick} is ours; L{errors.NickTaken} if it is
        held (nicknames compare without case)."""

    def release(nick):
        """Give C{nick} up."""

    def respell(nick):
        """List C{nick}, which we hold under another case ("bob" for "Bob"),
        as C{nick} from now on: a change of case keeps the claim."""

    def holds(nick):
        """Fire with whether anyone, on any node, holds C{nick}."""

    def who():
        """Fire with every nickname held, sorted."""

    def where(nick):
        """Fire with the name of the node whose member holds C{nick} (None:
        nobody holds it, or there is only this node)."""


class IParticipant(Interface):
    """A member of the chat room, on whatever front."""

    nick = Attribute("The nickname, set by the room on join.")
    account = Attribute("The mail account this nickname belongs to, or None.")
    peer = Attribute("Where the participant connects from, for the chat log.")
    format = Attribute(
        "Its front's words: a function from a room event (L{mailsvc.core.events})"
        " to the bytes to send. The room renders each event once per format"
        " (L{mailsvc.core.events.Event.render}), however many members share it."
    )

    def send(data):
        """Deliver C{data}, an event as L{format} rendered it."""


class IFront(Interface):
    """A protocol served on a port of its own; see L{mailsvc.fronts.registry}."""

    name = Attribute("A short name: 'mail', 'chat'.")
    option = Attribute("Its port option, without the dashes: '<name>-port'.")
    default = Attribute("The default endpoint description; 'none' serves nothing.")
    description = Attribute("One line for --help.")
    parameters = Attribute("Extra option rows of its own, as usage.Options' optParameters.")

    def build(service, config, reactor):
        """Return the factory that serves this front."""

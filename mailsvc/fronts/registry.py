"""
The fronts mailsvc serves: the built-in ones, those registered at run time
(L{register}), and those any installed package provides as a Twisted plugin
(an object providing L{IFront} in a C{twisted/plugins/} module), as
twisted.words' C{IProtocolPlugin} does for its protocols.

C{twistd mailsvc} makes a C{--<name>-port} option of each front; the
application listens on each that is not C{none}; shutdown, the testing kit and
the subprocess harness go by front name.
"""

from dataclasses import dataclass, field
from typing import Callable

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from mailsvc.interfaces import IFront

OFF = "none"


@implementer(IPlugin, IFront)
@dataclass(frozen=True)
class Front:
    """
    @ivar build: C{build(service, config, reactor)} returns the factory.
    @ivar parameters: option rows of the front's own (usage.Options'
        optParameters).
    @ivar short: a one-letter name of its port option, or None.
    @ivar aliases: other long names of its port option (C{port} for mail).
    """

    name: str
    default: str
    description: str
    build: Callable
    parameters: tuple = ()
    short: str = None
    aliases: tuple = ()
    option: str = field(default=None)

    def __post_init__(self):
        if self.option is None:
            object.__setattr__(self, "option", self.name + "-port")


_registered = []


def register(front):
    """Serve C{front} too, from now on (until L{unregister})."""
    _registered.append(front)


def unregister(front):
    _registered.remove(front)


def builtin():
    from mailsvc.fronts import chat, irc, mail, pop3, smtp, web

    return [mail.FRONT, chat.FRONT, irc.FRONT, smtp.FRONT, pop3.FRONT, web.FRONT]


def fronts():
    """Every front, built-in ones first; a later front of the same name loses."""
    found = builtin() + list(_registered) + [
        IFront(plugin) for plugin in getPlugins(IFront)
    ]
    seen, ordered = set(), []
    for front in found:
        if front.name not in seen:
            seen.add(front.name)
            ordered.append(front)
    return ordered

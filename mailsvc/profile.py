"""
mailsvc-client's profile: the settings nobody wants to type every time.

The file is C{$XDG_CONFIG_HOME/mailsvc/client.toml} (C{~/.config/...} when the
variable is unset or empty), one TOML table per profile; C{--profile NAME} (or
C{MAILSVC_PROFILE}) picks one, C{[default]} is used otherwise. A setting comes
from, first to last: the command line, a C{MAILSVC_*} variable, the profile,
the built-in default. A password is read from the file only when nobody but
its owner may read it (mode 0600 or stricter), as ssh does with its keys.
"""

import os
import stat
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Setting -> (its type, its variable). Ports are numbers; the rest text.
SETTINGS = {
    "host": (str, "MAILSVC_HOST"),
    "mail_port": (int, "MAILSVC_MAIL_PORT"),
    "chat_port": (int, "MAILSVC_CHAT_PORT"),
    "irc_port": (int, "MAILSVC_IRC_PORT"),
    "channel": (str, "MAILSVC_CHANNEL"),
    "user": (str, "MAILSVC_USER"),
    "nick": (str, "MAILSVC_NICK"),
    "password": (str, "MAILSVC_PASSWORD"),
}

DEFAULT_PROFILE = "default"


class ProfileError(Exception):
    """The profile cannot be used: its file does not parse, or holds a typo."""


def path(environ=os.environ):
    """Where the profile file is, whether or not it exists."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return os.path.join(base, "mailsvc", "client.toml")


class Profile:
    """
    The settings of one profile, with the variables over them.

    @ivar warnings: what the user should hear about the file (a password
        ignored because others may read it).
    """

    def __init__(self, settings, variables, source, warnings=()):
        self._settings = settings
        self._variables = variables
        self.source = source
        self.warnings = list(warnings)

    def get(self, name, default=None):
        if name in self._variables:
            return self._variables[name]
        return self._settings.get(name, default)

    def password_for(self, account):
        """
        C{MAILSVC_PASSWORD}, else the profile's password if it is C{account}'s
        (the profile names no user, or this one): never one account's
        password sent for another.
        """
        if "password" in self._variables:
            return self._variables["password"]
        owner = self._settings.get("user")
        if owner is None or (account or "").lower() == owner.lower():
            return self._settings.get("password")
        return None


def load(name=None, environ=os.environ):
    """
    The L{Profile} named C{name} (or C{MAILSVC_PROFILE}, or C{default}),
    under the C{MAILSVC_*} variables.

    @raise ProfileError: the file does not parse, the profile named does not
        exist, or a setting is unknown or of the wrong type.
    """
    name = name or environ.get("MAILSVC_PROFILE") or None
    where = path(environ)
    settings, warnings = _read(where, name or DEFAULT_PROFILE, name is not None)
    variables = {}
    for key, (kind, variable) in SETTINGS.items():
        value = environ.get(variable)
        if value:
            variables[key] = _typed(kind, value, variable)
    return Profile(settings, variables, where, warnings)


def _read(where, name, required):
    try:
        with open(where, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            tables = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ProfileError("no profile %s: %s does not exist" % (name, where))
        return {}, []
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError("cannot read %s: %s" % (where, e))
    except tomllib.TOMLDecodeError as e:
        raise ProfileError("%s is not TOML: %s" % (where, e))
    table = tables.get(name)
    if table is None:
        if required:
            known = ", ".join(sorted(k for k, v in tables.items() if isinstance(v, dict)))
            raise ProfileError(
                "no profile [%s] in %s (%s)" % (name, where, known or "it has none")
            )
        return {}, []
    if not isinstance(table, dict):
        raise ProfileError("%s: %s is not a [table]" % (where, name))
    settings, warnings = {}, []
    for key, value in table.items():
        if key not in SETTINGS:
            raise ProfileError(
                "%s: [%s] has an unknown setting %s (known: %s)"
                % (where, name, key, ", ".join(SETTINGS))
            )
        kind = SETTINGS[key][0]
        if kind is int and isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProfileError(
                "%s: [%s] %s must be %s" % (where, name, key, "a number" if kind is int else "text")
            )
        settings[key] = value
    if "password" in settings and stat.S_IMODE(mode) & 0o077:
        del settings["password"]
        warnings.append(
            "%s may be read by others (mode %04o): its password is ignored; chmod 600 %s"
            % (where, stat.S_IMODE(mode), where)
        )
    return settings, warnings


def _typed(kind, value, where):
    if kind is int:
        try:
            return int(value)
        except ValueError:
            raise ProfileError("%s must be a port number" % (where,))
    return value

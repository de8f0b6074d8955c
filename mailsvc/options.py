"""
Option value types for C{twistd mailsvc}: each converts a value and knows its
bound, so that the options are checked by their types, not by a list of names.
"""


def _bounded(convert, minimum, requirement):
    def coerce(value):
        return convert(value)

    coerce.minimum = minimum
    coerce.requirement = requirement
    coerce.coerceDoc = "%s, %s." % (
        "A whole number" if convert is int else "A number",
        requirement,
    )
    return coerce


positive_int = _bounded(int, 1, "more than 0")
positive_float = _bounded(float, 1e-300, "more than 0")
non_negative_int = _bounded(int, 0, "0 or more")


def check_bounds(options, rows):
    """Refuse any option of C{rows} (optParameters rows) outside its type's bound."""
    from twisted.python import usage

    for row in rows:
        name, coerce = row[0], row[4] if len(row) > 4 else None
        minimum = getattr(coerce, "minimum", None)
        if minimum is not None and options[name] < minimum:
            raise usage.UsageError("--%s must be %s" % (name, coerce.requirement))


def endpoint(description):
    """A bare port number means TCP on every interface, as twistd's own plugins do."""
    return "tcp:" + description if description.isdigit() else description

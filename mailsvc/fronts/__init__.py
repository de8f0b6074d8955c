"""
The fronts: each parses its protocol and replies, and leaves the state to the
shared service. L{registry} lists them; L{lines} is what the line fronts share.
"""


def reason_for(error, words):
    """
    What a front says for C{error}: its own C{words} for the error's type
    (a string, or a function of the error), else the error's reason.
    """
    said = words.get(type(error))
    if said is None:
        return error.reason
    return said(error) if callable(said) else said

"""
mailsvc-client on a terminal: prompt_toolkit's prompt (line editing, history,
completion) over Twisted's asyncio reactor, the chat screen, and how things
look. Used only when standard input and output are both a terminal; pipes and
scripts get the plain line mode of L{mailsvc.cli}.
"""

"""mailsvc: a Twisted mail command service and group chat over one shared state."""

"""The service and what it is made of: accounts, sessions, auth, the room."""

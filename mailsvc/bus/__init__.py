"""The bus between the room and its members, and nickname presence."""

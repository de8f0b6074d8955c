"""
The docs say what the code does: docs/operations.md's options table has a row
for every option C{twistd mailsvc --help} prints, with its default.
"""

import re
from pathlib import Path

from mailsvc.tap import Options

OPERATIONS = Path(__file__).parent.parent / "docs" / "operations.md"


def options_table():
    """{long option name: default cell} from the table under "## Options"."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `-"):
            continue
        option, default = [cell.strip() for cell in line.strip("|").split(" | ")[:2]]
        for name in re.findall(r"`--([a-z0-9-]+)=?`", option):
            rows[name] = default
    return rows


def documented_default(cell):
    """The default a cell gives: its first code span, or None for "none"."""
    if cell == "none":
        return None
    found = re.match(r"`([^`]*)`", cell)
    assert found, "a default cell without a code span: %r" % (cell,)
    return found.group(1)


def test_every_option_has_its_row_and_its_default():
    """Planted: a row deleted; a default changed in tap.py only."""
    options = Options()
    table = options_table()
    names = {row[0] for row in options.rows}
    aliases = {alias for front in options.fronts for alias in front.aliases}
    assert set(table) == names | aliases, (
        "missing rows: %s; rows of no option: %s"
        % (sorted((names | aliases) - set(table)), sorted(set(table) - names - aliases))
    )
    for row in options.rows:
        name, default = row[0], row[2]
        wanted = None if default is None else str(default)
        assert documented_default(table[name]) == wanted, name

"""The client library stands alone: importing it does not import the CLI."""

import subprocess
import sys


def test_the_client_library_does_not_import_the_cli():
    code = (
        "import sys, mailsvc.client\n"
        "assert 'mailsvc.cli' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

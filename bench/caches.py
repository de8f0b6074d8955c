"""
What a shared store's caches-off costs the node: microseconds of the node's
own CPU per COUNT (session and count read from the store every time, or
from memory), on an SQLite file run inline, so that no thread hand-off or
network round trip is counted (those are PostgreSQL's: bench/nodes.py).

    .venv/bin/python bench/caches.py [--count 20000]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock  # noqa: E402

from mailsvc.core.passwords import Passwords  # noqa: E402
from mailsvc.core.service import SharedService  # noqa: E402
from mailsvc.store.sqlite import SQLiteStorage  # noqa: E402


def per_count(shared, count, directory, run):
    storage = SQLiteStorage.inline(str(Path(directory) / ("%d.sqlite" % run)))
    storage.shared = shared
    service = SharedService(storage, Passwords.inline(), Clock())
    service.startService()
    cookies = []
    service.register("alice", "password").addCallback(cookies.append)
    [cookie] = cookies
    started = time.process_time()
    for _ in range(count):
        service.count(cookie)
    elapsed = time.process_time() - started
    service.stopService()
    return 1e6 * elapsed / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for run, shared in enumerate((False, True, False, True)):
            print(
                "caches %s: %.1f us per COUNT"
                % ("off (shared)" if shared else "on", per_count(shared, args.count, directory, run))
            )


if __name__ == "__main__":
    main()

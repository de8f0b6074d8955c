"""
Group commit on PostgreSQL: what savepoints cost. C{W} writers deliver
mail through one L{PostgresStorage} as fast as it acknowledges, in one
process (no network front, no password hashing: the store alone), with

  needed   a savepoint only for the requests that can fail after writing
           (what mailsvc does: a delivery has none),
  every    a savepoint for every request, at most 63 a transaction,
  uncapped a savepoint for every request, however many a transaction holds.

    .venv/bin/python bench/savepoints.py [--postgres URL] [--seconds 3]

Each run gets a new database, dropped afterwards. The figures and what
limits them: docs/performance.md ("Several nodes").
"""

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

import psycopg
from twisted.internet import defer, task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsvc.store import Quotas  # noqa: E402
from mailsvc.store import postgres  # noqa: E402
from mailsvc.store.postgres import PostgresStorage, queries  # noqa: E402
from mailsvc.testing.postgres import with_database  # noqa: E402


def run(reactor, admin_url, mode, writers, seconds):
    name = "mailsvc_bench_" + secrets.token_hex(4)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute('CREATE DATABASE "%s"' % name)
    url = with_database(admin_url, name)
    queries.deliver.guarded = mode != "needed"
    postgres.SAVEPOINTS = 10**9 if mode == "uncapped" else 63
    storage = PostgresStorage.open(url, reactor, Quotas(messages=10**9, bytes=10**12))
    storage.startService()
    done = [0]
    stop_at = reactor.seconds() + seconds

    @defer.inlineCallbacks
    def writer(i):
        while reactor.seconds() < stop_at:
            yield storage.deliver("sink", "bench", "s", "a line of body text", 1.0)
            done[0] += 1

    @defer.inlineCallbacks
    def measure():
        yield storage.add_account("sink", "hash", 1.0)
        yield defer.gatherResults([writer(i) for i in range(writers)])
        yield storage.stopService()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute('DROP DATABASE "%s" WITH (FORCE)' % name)
        return {"mode": mode, "writers": writers, "per_s": round(done[0] / seconds)}

    return measure()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "MAILSVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/postgres"
        ),
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    @defer.inlineCallbacks
    def all_runs(reactor):
        results = []
        for writers in (50, 200):
            for mode in ("needed", "every", "uncapped"):
                result = yield run(reactor, args.postgres, mode, writers, args.seconds)
                print(json.dumps(result), flush=True)
                results.append(result)
        return results

    task.react(all_runs)


if __name__ == "__main__":
    main()

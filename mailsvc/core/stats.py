"""
What the server counts for its operators: plain numbers kept where the work
is done (the room, the fronts' factories, the checker, the store), read only
when someone asks (the web front's C{/metrics} and C{/status.json}).

Why plain numbers: a chat line to a thousand members is one of the hottest
paths of the server; an integer addition costs nothing there, where a
metrics library's labelled counter takes a lock. The web front turns these
into Prometheus metrics at scrape time (L{mailsvc.fronts.web.metrics}).
"""

import bisect


class Histogram:
    """
    Observations counted into buckets (upper bounds, ascending), with their
    sum: what a Prometheus histogram reports.
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        # One more than the bounds: the +Inf bucket.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self):
        """C{[(upper bound as text, observations at most it)]}, +Inf last."""
        buckets, total = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return buckets

"""Handlers of the sharding tests (tests/test_shards.py): a view for each kind of merge."""

import bucketly


def spread(results):
    """A handler-defined merge: how many partitions answered, and their events."""
    return {"partitions": len(results), "events": sum(results)}


class Clicks(bucketly.Handler):
    """Unique users per url; each view declares how its partitions' results combine."""

    dump_merge = "dict_union"

    def __init__(self, config):
        super().__init__(config)
        self.users = {}
        self.events = 0
        self.values = []

    def on_event(self, event):
        self.users.setdefault(event["url"], set()).add(event["user"])
        self.events += 1
        if "n" in event:
            self.values.append(event["n"])

    @bucketly.view(merge="sum")
    def count(self):
        return self.events

    @bucketly.view(merge="sum")
    def users_of(self, url):
        return len(self.users.get(url, ()))

    @bucketly.view(merge="union")
    def all_users(self):
        return sorted({u for users in self.users.values() for u in users})

    @bucketly.view(merge="concat")
    def urls(self):
        return sorted(self.users)

    @bucketly.view(merge="max")
    def largest(self):
        return max(self.values, default=None)

    @bucketly.view(merge="min")
    def smallest(self):
        return min(self.values, default=None)

    @bucketly.view(merge="top")
    def top(self, n=3):
        ranked = sorted(self.users.items(), key=lambda item: (-len(item[1]), item[0]))
        return [[url, len(users)] for url, users in ranked[:n]]

    @bucketly.view(merge="dict_sum")
    def per_url(self):
        return {url: len(users) for url, users in self.users.items()}

    @bucketly.view(merge=spread)
    def events_spread(self):
        return self.events

    @bucketly.view
    def unmerged(self):
        return self.events

    def dump(self):
        return {url: sorted(users) for url, users in self.users.items()}


class Plain(bucketly.Handler):
    """Counts events; no merges at all."""

    def __init__(self, config):
        super().__init__(config)
        self.events = 0

    def on_event(self, event):
        self.events += 1

    @bucketly.view
    def count(self):
        return self.events

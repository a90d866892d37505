"""The example handlers module from the README: unique users per URL.

Start a server on it with::

    bucketlyd bucketly_database.dat --bucket_handlers examples/hndlrs.py \
        --hostname 127.0.0.1 --port 8484
"""

from sys import intern

import bucketly


class UniqueClicks(bucketly.Handler):
    """Unique users per URL, from events {"url": ..., "user": ...}."""

    def __init__(self, config):
        super().__init__(config)
        self.users = {}

    def on_event(self, event):
        self.users.setdefault(event["url"], set()).add(intern(event["user"]))

    def on_events(self, events):
        # One call per batch, and one string object per distinct user (intern): the same
        # user in many URLs' sets then costs a set slot each, not a string each.
        users = self.users
        for event in events:
            url = event["url"]
            seen = users.get(url)
            if seen is None:
                seen = users[url] = set()
            seen.add(intern(event["user"]))

    @bucketly.view
    def count(self, url):
        """How many distinct users clicked ``url``."""
        return len(self.users.get(url, ()))

    @bucketly.view
    def top(self, n=10):
        """The ``n`` URLs with the most distinct users."""
        ranked = sorted(self.users.items(), key=lambda item: len(item[1]), reverse=True)
        return [[url, len(users)] for url, users in ranked[:n]]

    def dump(self):
        return {url: sorted(users) for url, users in self.users.items()}


class EventCounter(bucketly.Handler):
    """Counts every event it receives; the smallest possible handler."""

    def __init__(self, config):
        super().__init__(config)
        self.count = 0

    def on_events(self, events):
        self.count += len(events)

    @bucketly.view
    def total(self):
        return self.count

    def dump(self):
        return {"count": self.count}

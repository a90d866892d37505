"""Handlers used by the test suite (loaded by a real bucketlyd)."""

import json
import socket
import threading
import time

import bucketly


class Recorder(bucketly.Handler):
    """Records every event; checks that it is never called concurrently."""

    def __init__(self, config):
        super().__init__(config)
        if config.get("reject"):
            raise ValueError("config rejected on purpose")
        self.events = []
        self.inside = 0
        self.overlaps = 0
        self.threads = set()

    def on_event(self, event):
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        self.threads.add(threading.get_ident())
        if isinstance(event, dict) and event.get("boom"):
            self.inside -= 1
            raise RuntimeError("boom on purpose")
        self.events.append(event)
        self.inside -= 1

    @bucketly.view
    def count(self):
        return len(self.events)

    @bucketly.view
    def all(self):
        return self.events

    @bucketly.view
    def health(self):
        return {"overlaps": self.overlaps, "threads": len(self.threads)}

    @bucketly.view
    def echo(self, value, twice=False):
        return [value, value] if twice else value

    @bucketly.view
    def broken(self):
        return 1 / 0

    @bucketly.view
    def unencodable(self):
        return object()

    @bucketly.view
    def nap(self, seconds):
        time.sleep(seconds)  # blocks the event loop on purpose (its lag is measured)

    def state_bytes(self):
        # 8 bytes an event, for the metrics tests; config "state_bytes" makes it misbehave.
        how = self.config.get("state_bytes")
        if how == "raise":
            raise RuntimeError("state_bytes fails on purpose")
        if how == "text":
            return "lots"
        return 8 * len(self.events)

    def dump(self):
        return {"events": self.events}


class BatchCounter(bucketly.Handler):
    """Counts events per batch call (on_events override)."""

    def __init__(self, config):
        super().__init__(config)
        self.batches = 0
        self.total = 0

    def on_events(self, events):
        self.batches += 1
        self.total += len(events)

    @bucketly.view
    def stats(self):
        return {"batches": self.batches, "total": self.total}


class Publisher(bucketly.Handler):
    """Publishes pending events to a TCP "sink" the test runs, every ``interval`` seconds.

    The slow part talks to the sink: it sends the batch as one JSON line and waits for a line
    back, "ok" or anything else (a failure). So a test controls exactly when a publish finishes
    and whether it fails, without sleeping.
    """

    def __init__(self, config):
        super().__init__(config)
        self.pending = []
        self.published = 0

    def on_events(self, events):
        self.pending.extend(events)

    @bucketly.every(seconds=3600, config_key="interval")
    def publish(self):
        if not self.pending:
            return None
        batch, self.pending = self.pending, []
        port = self.config["sink_port"]

        def work():
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                sock.sendall(json.dumps(batch).encode() + b"\n")
                answer = sock.makefile().readline().strip()
            if answer != "ok":
                raise ConnectionError(f"sink said {answer!r}")
            return len(batch)

        def succeeded(count):
            self.published += count

        def failed(exc):
            self.pending[:0] = batch  # put it back, in front of what came since

        return bucketly.Job(work, on_success=succeeded, on_failure=failed)

    @bucketly.view
    def state(self):
        return {"pending": len(self.pending), "published": self.published}


class Escape(BaseException):
    """Not an ``Exception``: what a careless handler might raise to "stop"."""


#: What ``Exiter`` raises for each event value (and view argument).
EXITS = {"exit": SystemExit, "interrupt": KeyboardInterrupt, "escape": Escape}


class Exiter(bucketly.Handler):
    """Raises a BaseException (not an Exception) from an event, a view or its job."""

    def __init__(self, config):
        super().__init__(config)
        self.events = []
        self.job_runs = 0

    def on_event(self, event):
        if event in EXITS:
            raise EXITS[event](event)
        self.events.append(event)

    @bucketly.view
    def all(self):
        return self.events

    @bucketly.view
    def escape(self, kind):
        raise EXITS[kind](kind)

    @bucketly.every(seconds=3600, config_key="interval")
    def job(self):
        self.job_runs += 1
        raise SystemExit("from a job")

    @bucketly.view
    def runs(self):
        return self.job_runs


class Fragile(bucketly.Handler):
    """Keeps its events; its ``snapshot()`` raises while the last event was "poison"."""

    def __init__(self, config):
        super().__init__(config)
        self.events = []
        self.poisoned = False

    def on_event(self, event):
        self.poisoned = event == "poison"
        self.events.append(event)

    def snapshot(self):
        if self.poisoned:
            raise RuntimeError("snapshot refused on purpose")
        return {"events": list(self.events)}

    def restore(self, state):
        self.events = state["events"]

    @bucketly.view
    def all(self):
        return self.events

"""Handlers of the durability tests (loaded by a real bucketlyd)."""

import collections
import time

import bucketly
from bucketly.unique import UNIQUE_INDEX_TYPES


class Ledger(bucketly.Handler):
    """Keeps every event, in the order applied: the ground truth the durability tests check."""

    def __init__(self, config):
        super().__init__(config)
        self.events = []

    def on_events(self, events):
        self.events.extend(events)

    @bucketly.view
    def all(self):
        return self.events

    @bucketly.view
    def count(self):
        return len(self.events)


class Shapes(bucketly.Handler):
    """State in every shape the default snapshot() must give back as it was."""

    def __init__(self, config):
        super().__init__(config)
        self.by_key = collections.defaultdict(set)
        self.pairs = set()
        self.counter = collections.Counter()
        self.recent = collections.deque(maxlen=3)
        self.firsts = {}
        self.big = 2**70
        self.unique = bucketly.UniqueIndex()

    def on_event(self, event):
        key, value = event["k"], event["v"]
        self.by_key[key].add(value)
        self.pairs.add((key, value))
        self.counter[key] += 1
        self.recent.append((key, value))
        self.firsts.setdefault((key, len(self.by_key[key])), frozenset({value}))
        self.big += 1
        self.unique.add(key, value)

    @bucketly.view
    def shapes(self):
        """Every attribute with the types inside it: equal only if restored exactly."""
        return {name: _canonical(value) for name, value in vars(self).items() if name != "config"}


def _canonical(value):
    """A string naming every type and value inside ``value``, independent of set order."""
    name = type(value).__name__
    if isinstance(value, UNIQUE_INDEX_TYPES):
        return "UniqueIndex" + _canonical({k: set(vs) for k, vs in value.items().items()})
    if isinstance(value, (set, frozenset)):
        return f"{name}{{{', '.join(sorted(_canonical(v) for v in value))}}}"
    if isinstance(value, dict):
        items = sorted(f"{_canonical(k)}: {_canonical(v)}" for k, v in value.items())
        factory = getattr(value, "default_factory", None)
        extra = f" factory={factory.__name__}" if factory is not None else ""
        return f"{name}{extra}{{{', '.join(items)}}}"
    if isinstance(value, (list, tuple, collections.deque)):
        extra = f" maxlen={value.maxlen}" if isinstance(value, collections.deque) else ""
        return f"{name}{extra}[{', '.join(_canonical(v) for v in value)}]"
    return f"{name}:{value!r}"


class _Box:
    def __init__(self):
        self.n = 0


class Opaque(bucketly.Handler):
    """State the default snapshot() cannot hold: snapshots fail, the log keeps everything."""

    def __init__(self, config):
        super().__init__(config)
        self.box = _Box()

    def on_event(self, event):
        self.box.n += event

    @bucketly.view
    def total(self):
        return self.box.n


class Picky(bucketly.Handler):
    """Raises on the event "boom" (after the events before it in its batch)."""

    def __init__(self, config):
        super().__init__(config)
        self.events = []

    def on_event(self, event):
        if event == "boom":
            raise ValueError("boom on purpose")
        self.events.append(event)

    @bucketly.view
    def all(self):
        return self.events


class Quitter(bucketly.Handler):
    """A ledger whose handler raises SystemExit on the event "quit" (and applies nothing)."""

    def __init__(self, config):
        super().__init__(config)
        self.events = []

    def on_event(self, event):
        if event == "quit":
            raise SystemExit("quit")
        self.events.append(event)

    @bucketly.view
    def all(self):
        return self.events


class Stuck(bucketly.Handler):
    """Its job takes what is pending and hangs in its work (a database that never answers)."""

    def __init__(self, config):
        super().__init__(config)
        self.pending = []
        #: What the running job took (not part of the state: see snapshot()).
        self.taken = []

    def on_events(self, events):
        self.pending.extend(events)

    def snapshot(self):
        return {"pending": list(self.pending)}

    def restore(self, state):
        self.pending = state["pending"]

    @bucketly.every(seconds=3600, config_key="interval")
    def flush(self):
        batch, self.pending = self.pending, []
        self.taken = batch

        def work():
            time.sleep(self.config.get("hang", 20))

        def failed(exc):
            self.pending[:0] = batch

        return bucketly.Job(work, on_failure=failed)

    @bucketly.view
    def all(self):
        return self.pending

    @bucketly.view
    def held(self):
        """What the bucket has, with what its running job took out."""
        return self.taken + self.pending

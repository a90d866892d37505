"""``Router``: which server each bucket and event goes to, and how many answers make one, no I/O.

Theory of operation. A client given several servers (``Client(servers=[...])``) keeps one
ordinary single-server client per server, so per-connection order, batching and the
exactly-once resend all hold per server, unchanged. Above them this router decides:

- A bucket lives on the server of highest rendezvous (HRW) weight for its name: a 64-bit
  BLAKE2b of ``"host:port"``, a NUL and the name. Adding a server moves only the buckets whose
  new highest weight is the new server's (docs/scaling.md, "Adding a server").
- A partitioned bucket lives on every server; each event goes to the server of highest weight
  for its key: the MessagePack encoding of the event's key field (or of what the named key
  function returns). Events with the same key always meet on one server.
- An op on a partitioned bucket goes to every server; their answers are merged (built-in
  merges here, in ``bucketly.merging``; a handler's own merge function runs on a server, with
  the ``merge`` op, so that handler code lives only with the handlers module).

Each op is a generator (``run``): it yields lists of ``Call`` (server index, op, arguments), is
sent back the outcome of each (its result, or the ``BucketlyError`` it raised), and returns the
answer. The sync shell runs a list's calls on threads, the asyncio shell with ``gather``: so the
routing, the fan-out and the merging are written once for both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    BucketlyError,
    NotMergeable,
    PermissionDenied,
    RoutingError,
    UnknownBucket,
)
from ..merging import CUSTOM, merge_builtin
from ..protocol.messages import pack

__all__ = [
    "CLOSE",
    "CONNECT",
    "FLUSH",
    "MAX_KEY_CACHE",
    "Call",
    "PartialResult",
    "Route",
    "Router",
    "hrw_owner",
    "parse_server",
]

#: Pseudo-ops of a ``Call``: the shell calls the sub-client's method of that name, not ``_call``.
CONNECT = "<connect>"
FLUSH = "<flush>"
CLOSE = "<close>"

#: Partition keys whose server a route remembers: a dict lookup instead of one hash per server
#: per event. Past it the memory is dropped and refilled (the hot keys come back first); 100,000
#: keys of ~50 bytes hold ~10 MB.
MAX_KEY_CACHE = 100_000

#: (index of the server in the client's list, op, arguments)
Call = tuple[int, str, dict[str, Any]]
#: What a call gave: its result, or the error it raised.
Outcome = Any
Plan = Generator[list[Call], list[Outcome], Any]

#: Ops that answer the same from every server (users, grants, passwords live in each server's
#: own database file): sent to all, the first answer returned, any failure raised naming it.
_EVERYWHERE = frozenset({
    "ping", "whoami", "change_password", "create_user", "delete_user", "set_password",
    "grant", "revoke", "permissions", "list_users", "list_handlers",
})
#: Ops whose answer is the server's own: sent to all, answered as ``{server: answer}``.
_PER_SERVER = frozenset({
    "stats", "audit", "handlers_module", "reload", "create_token", "list_tokens", "revoke_token",
})
#: Bucket ops that, on a partitioned bucket, act on every partition.
_ALL_PARTITIONS = frozenset({"configure_bucket", "delete_bucket"})


def parse_server(server: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"``) -> (host, port); raises ``ValueError``."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"server {server!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _weight(server: bytes, name: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(server + b"\0" + name, digest_size=8).digest(), "big")


def hrw_owner(servers: Sequence[bytes], name: bytes) -> int:
    """The index of the server of highest rendezvous weight for ``name``."""
    best, best_weight = 0, -1
    for index, server in enumerate(servers):
        weight = _weight(server, name)
        if weight > best_weight:
            best, best_weight = index, weight
    return best


@dataclass(frozen=True, slots=True)
class PartialResult:
    """A merged view or dump of the partitions that answered (``partial=True`` only)."""

    value: Any
    #: ``host:port`` -> why that partition is missing from ``value``. Empty: nothing missing.
    missing: dict[str, str]

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(slots=True)
class Route:
    """Where a bucket's events go: ``owner`` for a bucket on one server; for a partitioned one
    (``owner`` None), the server of its key, found by ``server_for``."""

    bucket: str
    owner: int | None
    #: The event field holding the key, or the key function (partitioned buckets).
    key_field: str | None = None
    key_function: Callable[[Any], Any] | None = None
    #: View name (or ``dump``) -> how it merges (``bucketly.merging``), from the servers.
    merges: dict[str, str] = field(default_factory=dict)
    servers: Sequence[bytes] = ()
    cache: dict[Any, int] = field(default_factory=dict)
    #: Each server's client's ``send``, set by the shell (``bind``): the hot path calls
    #: ``route.send`` straight, one dict lookup from the client's own.
    sends: Sequence[Callable[[str, Any], Any]] = ()

    def bind(self, sends: Sequence[Callable[[str, Any], Any]]) -> Callable[[str, Any], Any]:
        """Remember the servers' ``send``s; return the one to call for an event of this bucket."""
        self.sends = sends
        return sends[self.owner] if self.owner is not None else self.send

    def send(self, bucket: str, event: Any) -> Any:
        """Send ``event`` with its key's server's client (a partitioned bucket's route)."""
        try:
            index = self.cache[event[self.key_field]]
        except (KeyError, TypeError, IndexError):
            index = self.server_for(event)
        return self.sends[index](bucket, event)

    def server_for(self, event: Any) -> int:
        """The index of the server that owns ``event``'s key."""
        if self.key_function is not None:
            key = self.key_function(event)
        else:
            try:
                key = event[self.key_field]
            except (KeyError, TypeError, IndexError):
                raise RoutingError(
                    f"bucket {self.bucket!r} is partitioned by the field {self.key_field!r}, "
                    f"which this event lacks: {event!r:.200}"
                ) from None
        try:
            return self.cache[key]
        except KeyError:
            pass
        except TypeError:  # unhashable: hash it every time
            return hrw_owner(self.servers, pack(key))
        cache = self.cache
        if len(cache) >= MAX_KEY_CACHE:
            cache.clear()
        index = cache[key] = hrw_owner(self.servers, pack(key))
        return index


def _on(server: str, exc: BaseException) -> BaseException:
    """``exc``, its message saying which server it came from (``exc.server`` too)."""
    if isinstance(exc, BucketlyError):
        exc.server = server  # type: ignore[attr-defined]
        if server not in exc.message:
            exc.message = f"{server}: {exc.message}"
            exc.args = (exc.message,)
    return exc


class Router:
    """The routing state of one client over several servers; see the module docstring."""

    def __init__(
        self,
        servers: Sequence[str],
        key_functions: dict[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        if isinstance(servers, str) or not servers:
            raise ValueError('servers must be a non-empty list of "host:port" strings')
        if len(set(servers)) != len(servers):
            raise ValueError(f"servers lists a server twice: {list(servers)}")
        for server in servers:
            parse_server(server)
        self.servers = list(servers)
        self._names = [s.encode() for s in self.servers]
        self.key_functions = dict(key_functions or {})
        #: Routes learnt, by bucket name (``route``); a bucket is asked about once.
        self.routes: dict[str, Route] = {}

    def owner(self, bucket: str) -> int:
        return hrw_owner(self._names, bucket.encode())

    # -- routes -------------------------------------------------------------------------------

    def learn(self, bucket: str, info: dict[str, Any] | None) -> Route:
        """Remember where ``bucket`` lives from its info (None: not known to exist yet)."""
        partition = None if info is None else info.get("partition")
        if partition is None:
            route = Route(bucket, self.owner(bucket))
        else:
            servers = partition.get("servers")
            if servers is not None and sorted(servers) != sorted(self.servers):
                raise RoutingError(
                    f"bucket {bucket!r} is partitioned over {sorted(servers)}, but this client "
                    f"has {sorted(self.servers)}: events would go to the wrong partitions. Use "
                    "the same server list (spelt the same) in every client"
                )
            function = None
            if "function" in partition:
                function = self.key_functions.get(partition["function"])
                if function is None:
                    raise RoutingError(
                        f"bucket {bucket!r} is partitioned by the key function "
                        f"{partition['function']!r}, which this client was not given "
                        f"(key_functions={{{partition['function']!r}: ...}})"
                    )
            route = Route(
                bucket,
                None,
                key_field=partition.get("key"),
                key_function=function,
                merges=dict(info.get("merges") or {}) if info is not None else {},
                servers=self._names,
            )
        self.routes[bucket] = route
        return route

    def route(self, bucket: str) -> Plan:
        """The route of ``bucket``, asking its HRW owner once (every partition has it too)."""
        route = self.routes.get(bucket)
        if route is not None:
            return route
        owner = self.owner(bucket)
        (outcome,) = yield [(owner, "bucket_info", {"bucket": bucket})]
        if isinstance(outcome, PermissionDenied):
            # A sender may hold only `send`: the list shows it the name and the partitioning.
            (outcome,) = yield [(owner, "list_buckets", {})]
            if not isinstance(outcome, BaseException):
                outcome = next((b for b in outcome if b.get("name") == bucket), None)
        if isinstance(outcome, UnknownBucket) or outcome is None:
            return Route(bucket, owner)  # not remembered: it may be created partitioned yet
        if isinstance(outcome, BaseException):
            raise _on(self.servers[owner], outcome)
        return self.learn(bucket, outcome)

    # -- ops ----------------------------------------------------------------------------------

    def run(self, op: str, args: dict[str, Any]) -> Plan:
        """The plan of one command (see the module docstring)."""
        everyone = range(len(self.servers))
        if op in _EVERYWHERE or op in _PER_SERVER:
            outcomes = yield [(i, op, args) for i in everyone]
            results = self._all_or_raise(outcomes, f"{op} on every server")
            if op in _EVERYWHERE:
                return results[0]
            return dict(zip(self.servers, results, strict=True))
        if op == "list_buckets":
            outcomes = yield [(i, op, args) for i in everyone]
            return _merge_listings(self.servers, self._all_or_raise(outcomes, "list_buckets"))
        bucket = args["bucket"]
        if op == "create_bucket":
            return (yield from self._create(bucket, args))
        route = yield from self.route(bucket)
        if route.owner is not None:
            args = {k: v for k, v in args.items() if k not in ("partial", "partitions")}
            (outcome,) = yield [(route.owner, op, args)]
            if isinstance(outcome, BaseException):
                raise _on(self.servers[route.owner], outcome)
            return outcome
        if op in _ALL_PARTITIONS:
            outcomes = yield [(i, op, args) for i in everyone]
            results = self._all_or_raise(outcomes, f"{op} of partitioned bucket {bucket!r}")
            if op == "delete_bucket":
                self.routes.pop(bucket, None)
            return results[0]
        if op == "bucket_info":
            outcomes = yield [(i, op, args) for i in everyone]
            results = self._all_or_raise(outcomes, f"bucket_info of {bucket!r}")
            info = dict(results[0])
            info["events"] = sum(r.get("events", 0) for r in results)
            info["partitions"] = dict(zip(self.servers, results, strict=True))
            return info
        if op in ("view", "dump"):
            return (yield from self._gather(route, op, args))
        # ``merge``: any partition can run it.
        (outcome,) = yield [(0, op, args)]
        if isinstance(outcome, BaseException):
            raise _on(self.servers[0], outcome)
        return outcome

    def _create(self, bucket: str, args: dict[str, Any]) -> Plan:
        partition = args.get("partition")
        if partition is None:
            owner = self.owner(bucket)
            (outcome,) = yield [(owner, "create_bucket", args)]
            if isinstance(outcome, BaseException):
                raise _on(self.servers[owner], outcome)
            self.learn(bucket, outcome)
            return outcome
        args = {**args, "partition": {**partition, "servers": list(self.servers)}}
        outcomes = yield [(i, "create_bucket", args) for i in range(len(self.servers))]
        failed = _failed(self.servers, outcomes)
        created = [s for s in self.servers if s not in dict(failed)]
        note = f" (created on {', '.join(created)}: delete it there, or retry)" if created else ""
        results = self._all_or_raise(outcomes, f"create_bucket {bucket!r}", note if failed else "")
        self.learn(bucket, results[0])
        return results[0]

    def _gather(self, route: Route, op: str, args: dict[str, Any]) -> Plan:
        """Ask every partition, merge their answers (view, dump)."""
        bucket = route.bucket
        partial = bool(args.get("partial"))
        per_partition = op == "dump" and bool(args.get("partitions"))
        name = args["view"] if op == "view" else "dump"
        what = f"view {name!r}" if op == "view" else "the dump"
        merge = route.merges.get(name)
        if op == "dump" and merge is None and not per_partition:
            raise NotMergeable(
                f"bucket {bucket!r} is partitioned and its handler declares no dump_merge: ask "
                "for the partitions' dumps (dump_partitions) or declare how they combine"
            )
        call_args = {k: v for k, v in args.items() if k not in ("partial", "partitions")}
        outcomes = yield [(i, op, call_args) for i in range(len(self.servers))]
        failed = dict(_failed(self.servers, outcomes))
        answered = {
            s: o for s, o in zip(self.servers, outcomes, strict=True) if s not in failed
        }
        missing = {s: str(_on(s, o)) for s, o in failed.items()}
        refusals = [o for o in outcomes if isinstance(o, NotMergeable)]
        if refusals:
            raise refusals[0]
        if missing and not partial:
            first = next(o for o in outcomes if isinstance(o, BaseException))
            raise self._partition_missing(bucket, what, missing, first)
        if per_partition:
            value: Any = answered
        elif not answered:
            value = None
        elif merge == CUSTOM:
            (value,) = yield [(self.servers.index(next(iter(answered))), "merge", {
                "bucket": bucket,
                **({"view": name} if op == "view" else {}),
                "results": list(answered.values()),
            })]
            if isinstance(value, BaseException):
                raise value
        else:
            assert merge is not None  # the servers refuse a view with no merge
            value = merge_builtin(merge, list(answered.values()), args.get("args"))
        return PartialResult(value, missing) if partial else value

    def _partition_missing(
        self, bucket: str, what: str, missing: dict[str, str], first: BaseException
    ) -> BaseException:
        servers = ", ".join(missing)
        if isinstance(first, BucketlyError):
            first.server = next(iter(missing))  # type: ignore[attr-defined]
            first.missing = missing  # type: ignore[attr-defined]
            first.message = (
                f"{what} of partitioned bucket {bucket!r} needs every partition; no answer "
                f"from {servers}: {first.message} (ask with partial=True for the others')"
            )
            first.args = (first.message,)
        return first

    def flush(self, method: str = FLUSH) -> Plan:
        """Flush (or close, connect) every server's client; raise naming those that failed."""
        outcomes = yield [(i, method, {}) for i in range(len(self.servers))]
        self._all_or_raise(outcomes, method.strip("<>"))

    def _all_or_raise(self, outcomes: list[Outcome], what: str, note: str = "") -> list[Any]:
        """The results, if no outcome is an error; else raise the first, naming its server."""
        failed = _failed(self.servers, outcomes)
        if not failed:
            return outcomes
        (server, first), rest = failed[0], failed[1:]
        error = _on(server, first)
        if isinstance(error, BucketlyError):
            error.failures = dict(failed)  # type: ignore[attr-defined]
            if rest:
                error.message += "; also failed on " + ", ".join(s for s, _ in rest)
            error.message += note
            error.args = (error.message,)
        raise error


def _failed(servers: list[str], outcomes: list[Outcome]) -> list[tuple[str, BaseException]]:
    return [(s, o) for s, o in zip(servers, outcomes, strict=True) if isinstance(o, BaseException)]


def _merge_listings(servers: list[str], listings: list[list[dict[str, Any]]]) -> list[Any]:
    """One entry per bucket name; a partitioned bucket's lists where it is (``partitions``)."""
    merged: dict[str, dict[str, Any]] = {}
    for server, listing in zip(servers, listings, strict=True):
        for info in listing:
            entry = merged.get(info["name"])
            if entry is None:
                entry = merged[info["name"]] = {**info, "servers": []}
            entry["servers"].append(server)
    return [merged[name] for name in sorted(merged)]

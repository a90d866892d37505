"""``Admission``: who gets a connection slot, and whose slot is taken back when there is none.

Theory of operation. A connection costs the server a slot (``--max-connections``) from its first
byte, but costs an attacker nothing until it must authenticate: one reconnect per
``--auth-timeout``. So slots are handed out by this policy (docs/security.md, "Connection
slots"), checked in ``admit()`` for every new connection:

1. One client address may hold at most ``--max-unauthenticated-per-address`` connections that
   have not logged in (IPv6: per /64, as for login throttling). One more from there takes the
   slot of that address's oldest such connection.
2. Connections that have not logged in may fill the server only up to ``--max-connections``
   less ``--reserved-connections``: the reserve is for connections that log in. One more takes
   the slot of the oldest connection that has not logged in, whatever its address.
3. When every slot is taken, a new connection takes the slot of the oldest connection that has
   not logged in; only when all of them are logged in is it refused (``too_many_connections``).

A connection whose login is being checked (its ``auth`` is hashing) is never the one whose slot
is taken, nor is one that has logged in: an attacker can only displace its own connections, or
connections that have not even tried to log in for longer than its newest ones. The evicted
connection is told why (``limit_exceeded``, ``detail.limit`` naming the option) and the audit
trail records it. Every step is O(1) but for skipping connections that are authenticating.

The bookkeeping changes in the one place a connection's authentication state changes
(``ServerConnection.log_in`` / ``log_out``) and when it closes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar

__all__ = [
    "DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS",
    "DEFAULT_RESERVED_CONNECTIONS",
    "Admission",
    "Waiting",
]

#: Connections one address may hold before they log in: enough for a host that starts a few
#: dozen producers at once (each is logged in within one password hash, tens of ms), far too few
#: to take a server's slots.
DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS = 32
#: Slots only connections that log in can have: with every other slot taken by connections
#: that have not, this many producers can still connect and log in at once.
DEFAULT_RESERVED_CONNECTIONS = 64


class Waiting(Protocol):
    """What the policy needs to know of a connection that has not logged in."""

    @property
    def authenticating(self) -> bool:
        """Whether its login is being checked right now (it is never evicted then)."""
        ...


C = TypeVar("C", bound=Waiting)


class Admission(Generic[C]):
    """The slots policy of one server, for connections of type ``C``; see the module docstring."""

    def __init__(self, max_connections: int, reserved: int, per_address: int) -> None:
        self.max_connections = max_connections
        #: Connections that have not logged in may take this many slots at most.
        self.max_unauthenticated = max(1, max_connections - reserved)
        self.per_address = per_address
        #: Connections admitted and not closed, logged in or not.
        self._admitted: set[C] = set()
        # Connections not logged in, oldest first: all of them, and by address.
        self._waiting: OrderedDict[C, str] = OrderedDict()
        self._by_address: dict[str, OrderedDict[C, None]] = {}

    @property
    def connections(self) -> int:
        return len(self._admitted)

    @property
    def unauthenticated(self) -> int:
        return len(self._waiting)

    def admit(self, conn: C, address: str) -> list[tuple[C, str]] | None:
        """Take a slot for a new connection from ``address``.

        Returns the connections to close to make room, each with the option whose limit it
        gives way to (usually none), or ``None`` when the connection must be refused.
        """
        victims: list[tuple[C, str]] = []
        same = self._by_address.get(address)
        if same is not None and len(same) >= self.per_address:
            victim = _oldest_idle(same)
            if victim is None:
                return None
            victims.append((victim, "max_unauthenticated_per_address"))
        full = self.connections - len(victims) >= self.max_connections
        if full or self.unauthenticated - len(victims) >= self.max_unauthenticated:
            victim = _oldest_idle(self._waiting, skip={v for v, _ in victims})
            if victim is None:
                return None
            victims.append((victim, "max_connections" if full else "reserved_connections"))
        for victim, _ in victims:
            self.closed(victim)
        self._admitted.add(conn)
        self.waiting(conn, address)
        return victims

    def waiting(self, conn: C, address: str) -> None:
        """``conn`` has not logged in (it is new, or it lost its login)."""
        self._waiting[conn] = address
        self._by_address.setdefault(address, OrderedDict())[conn] = None

    def logged_in(self, conn: C) -> None:
        address = self._waiting.pop(conn, None)
        if address is not None:
            same = self._by_address[address]
            del same[conn]
            if not same:
                del self._by_address[address]

    def closed(self, conn: C) -> None:
        """``conn`` gives its slot back (again: nothing happens)."""
        self.logged_in(conn)
        self._admitted.discard(conn)


def _oldest_idle(
    connections: OrderedDict[C, None] | OrderedDict[C, str],
    skip: set[C] | None = None,
) -> C | None:
    for conn in connections:
        if not conn.authenticating and (skip is None or conn not in skip):
            return conn
    return None

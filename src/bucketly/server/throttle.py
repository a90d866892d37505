"""Throttling of failed logins, per user name and per client address, before any hashing.

Theory of operation. Each key (``user:<name>``, ``peer:<address>``, or ``pair:<name>@<address>``)
has a record of recent failures. ``free_failures`` failures (``--auth-free-failures``) cost
nothing; the last of them, and each one after, closes the key for an exponentially growing window
(``AUTH_BASE_DELAY`` doubling up to ``max_delay``, ``--auth-max-delay``): so after exactly
``free_failures`` failures the next login is refused.
A login on a closed key is refused with ``too_many_attempts`` without touching the password, so a
guesser gets at most one hash per window. Windows are capped and records are forgotten after
``AUTH_FORGET_AFTER`` quiet seconds, so the right password is never locked out for good.

Which keys a password login is checked against (``keys_for``): a user who logged in from an
address within ``AUTH_TRUST_SECONDS`` is checked only against its own pair key there, so other
people's failures (a guesser behind the same NAT, or guessing this user's password from elsewhere)
do not lock it out of the place it usually logs in from; anyone else is checked against the pair,
the user and the address. Every failure counts against all three. A successful login clears the
pair and the user (not the address: a valid account must not buy a sprayer a fresh budget), and
makes the pair trusted. Token logins are not throttled: a token's secret has 128 random bits.

Besides the window, ``turn()`` lets at most ``AUTH_CONCURRENCY_PER_KEY`` logins of one key hash at
once; the others wait their turn. So a thousand connections from one address, or aimed at one
user, queue behind each other instead of filling the hashing threads for everybody, and are
checked against the window again when their turn comes.

Unknown and known user names are throttled alike (no way to tell them apart), and the table is
bounded (``AUTH_MAX_TRACKED`` keys, oldest forgotten first). IPv6 addresses count per /64: one
host has a whole /64 to choose from.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

__all__ = [
    "AUTH_BASE_DELAY",
    "AUTH_CONCURRENCY_PER_KEY",
    "AUTH_FORGET_AFTER",
    "AUTH_FREE_FAILURES",
    "AUTH_MAX_DELAY",
    "AUTH_MAX_TRACKED",
    "AUTH_TRUST_SECONDS",
    "AuthThrottle",
    "pair_key",
    "peer_key",
    "user_key",
]

#: Failures per key before any waiting (default of --auth-free-failures): enough for typos, few
#: enough to make guessing pointless.
AUTH_FREE_FAILURES = 5
#: The window after the first failure over the free ones, in seconds; doubles with each failure.
AUTH_BASE_DELAY = 1.0
#: The longest window (default of --auth-max-delay): a legitimate user locked out by someone
#: else's guessing waits at most this.
AUTH_MAX_DELAY = 60.0
#: Seconds without a failure after which a key's failures are forgotten.
AUTH_FORGET_AFTER = 15 * 60.0
#: Logins of one key hashing at the same time; more wait for their turn.
AUTH_CONCURRENCY_PER_KEY = 2
#: Keys remembered at most (~200 bytes each): a flood of made-up names cannot grow memory.
AUTH_MAX_TRACKED = 10_000
#: How long a successful login makes its (user, address) pair trusted: about a work week, so a
#: producer that reconnects now and then, or a person who logs in daily, keeps it.
AUTH_TRUST_SECONDS = 7 * 24 * 3600.0


def user_key(name: str) -> str:
    return "user:" + name[:100]


def pair_key(name: str, host: str) -> str:
    return "pair:" + name[:100] + "@" + peer_key(host)[5:]


def peer_key(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "peer:" + host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "peer:" + str(address.ipv4_mapped)
        return "peer:" + str(ipaddress.ip_network(f"{address}/64", strict=False))
    return "peer:" + str(address)


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    closed_until: float = 0.0


@dataclass(slots=True)
class _Turn:
    semaphore: asyncio.Semaphore
    users: int = 0


class AuthThrottle:
    """Failed-login bookkeeping: ``retry_after`` before hashing, then ``failed``/``succeeded``."""

    def __init__(
        self,
        free_failures: int = AUTH_FREE_FAILURES,
        max_delay: float = AUTH_MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.max_delay = max_delay
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._turns: dict[str, _Turn] = {}
        #: Pair keys that logged in lately, with when (oldest first; bounded like records).
        self._trusted: OrderedDict[str, float] = OrderedDict()

    def keys_for(self, name: str, host: str) -> tuple[str, ...]:
        """The keys a password login of ``name`` from ``host`` is checked against."""
        pair = pair_key(name, host)
        trusted = self._trusted.get(pair)
        if trusted is not None and self._clock() - trusted <= AUTH_TRUST_SECONDS:
            return (pair,)
        return (pair, user_key(name), peer_key(host))

    def retry_after(self, *keys: str) -> float:
        """Seconds until every key is open again (0.0: go ahead)."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            record = self._records.get(key)
            if record is None:
                continue
            if now - record.last_failure > AUTH_FORGET_AFTER:
                del self._records[key]
                continue
            wait = max(wait, record.closed_until - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            record = self._records.pop(key, None) or _Record()
            self._records[key] = record  # most recently failed last: evicted last
            record.failures += 1
            record.last_failure = now
            over = record.failures - self.free_failures + 1
            if over > 0:
                delay = min(AUTH_BASE_DELAY * 2 ** min(over - 1, 32), self.max_delay)
                record.closed_until = now + delay
        while len(self._records) > AUTH_MAX_TRACKED:
            self._records.popitem(last=False)

    def succeeded(self, name: str, host: str) -> None:
        """A password login of ``name`` from ``host`` worked: clear the pair and the user."""
        pair = pair_key(name, host)
        self._records.pop(pair, None)
        self._records.pop(user_key(name), None)
        self._trusted.pop(pair, None)
        self._trusted[pair] = self._clock()
        while len(self._trusted) > AUTH_MAX_TRACKED:
            self._trusted.popitem(last=False)

    def failures(self, key: str) -> int:
        record = self._records.get(key)
        return record.failures if record else 0

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        """Wait until fewer than ``AUTH_CONCURRENCY_PER_KEY`` logins of ``key`` are hashing."""
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn(asyncio.Semaphore(AUTH_CONCURRENCY_PER_KEY))
        turn.users += 1
        try:
            async with turn.semaphore:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[key]

    def __len__(self) -> int:
        return len(self._records)

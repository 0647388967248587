"""The gate: which received packets may have their content stored (sans-I/O, no Django).

A packet's content is stored only when its source is a registered router, an intercept
claims it (intercept id, pinned session id if any, router scope if any), and that
intercept and its case are in force at the packet's receive time. :meth:`Gate.claim`
answers with a :class:`Claim` or with the reason it is dropped.

A :class:`Gate` is built once from the records (see ``receiver.gate_loader``) and never
changes: when the records change, the receiver builds a new one and swaps the reference,
so the capture thread never sees a half-updated gate and needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from receiver.jmirror import INTERCEPT_ID_MASK

DropReason = Literal["unknown_router", "no_intercept", "outside_window"]
UNKNOWN_ROUTER: Final = "unknown_router"
NO_INTERCEPT: Final = "no_intercept"
OUTSIDE_WINDOW: Final = "outside_window"
DROP_REASONS: Final[tuple[DropReason, ...]] = (UNKNOWN_ROUTER, NO_INTERCEPT, OUTSIDE_WINDOW)


@dataclass(frozen=True, slots=True)
class RouterRule:
    """A registered mirror source."""

    router_id: int
    address: str


@dataclass(frozen=True, slots=True)
class InterceptRule:
    """What one intercept claims and when.

    ``window`` is the intersection of the intercept's and its case's validity, as
    nanoseconds since the epoch, start included and end excluded (it may be empty).
    ``active`` is whether the case's status is active; ``router_ids`` empty means any
    registered router.
    """

    intercept_id_pk: int
    liid: str
    case_id: int
    case_reference: str
    mirror_id: int
    sid: int | None
    router_ids: frozenset[int]
    window: tuple[int, int]
    active: bool
    keep_content: bool


class Claim(NamedTuple):
    """A packet claimed by an intercept: the router it came from and the intercept.

    A named tuple rather than a dataclass: one is made per stored packet, and a tuple is
    the cheapest immutable record to build.
    """

    router: RouterRule
    intercept: InterceptRule


def _specificity(rule: InterceptRule) -> tuple[bool, bool, int, int]:
    # Validation forbids two rules claiming the same packet, so order only matters for
    # determinism: pinned sid first, then router-scoped, then by window and primary key.
    return (rule.sid is None, not rule.router_ids, rule.window[0], rule.intercept_id_pk)


# What claim() reads of a rule, flattened into a tuple: unpacking one is cheaper than
# reading four attributes. (sid, router_ids, start, end, rule); an inactive case gets an
# empty window, so the loop needs no separate status test.
_Entry = tuple[int | None, frozenset[int], int, int, InterceptRule]


def _entry(rule: InterceptRule) -> _Entry:
    start, end = rule.window if rule.active else (0, 0)
    return (rule.sid, rule.router_ids, start, end, rule)


_FOREVER: Final = 2**63
# Builds a Claim without NamedTuple's generated __new__, one Python call less per packet.
_new_claim = tuple.__new__


class Gate:
    """An immutable set of routers and intercept rules, indexed for :meth:`claim`."""

    __slots__ = ("_by_address", "_by_mirror_id", "intercepts", "routers")
    routers: tuple[RouterRule, ...]
    intercepts: tuple[InterceptRule, ...]
    _by_address: dict[str, RouterRule]
    _by_mirror_id: dict[int, tuple[_Entry, ...]]

    def __init__(self, routers: Iterable[RouterRule], intercepts: Iterable[InterceptRule]):
        ordered = tuple(sorted(intercepts, key=_specificity))
        by_mirror_id: dict[int, list[_Entry]] = {}
        for rule in ordered:
            by_mirror_id.setdefault(rule.mirror_id, []).append(_entry(rule))
        routers = tuple(routers)
        # Set once through object.__setattr__: __setattr__ below refuses later changes.
        object.__setattr__(self, "routers", routers)
        object.__setattr__(self, "intercepts", ordered)
        object.__setattr__(self, "_by_address", _address_index(routers))
        object.__setattr__(
            self,
            "_by_mirror_id",
            {mirror_id: tuple(rules) for mirror_id, rules in by_mirror_id.items()},
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Gate cannot be changed (setting {name!r}); build a new one")

    def __repr__(self) -> str:
        return f"<Gate: {len(self.routers)} routers, {len(self.intercepts)} intercepts>"

    @property
    def mirror_ids(self) -> tuple[int, ...]:
        """The intercept ids some rule claims: a registered router's datagram with any
        other (``mid & INTERCEPT_ID_MASK``) is no_intercept, whatever its sid and time."""
        return tuple(self._by_mirror_id)

    def claim(self, router_address: str, mid: int, sid: int, time_ns: int) -> Claim | DropReason:
        """The claim on a packet from ``router_address`` with jmirror header ``mid`` (raw
        32 bits) and ``sid``, received at ``time_ns`` (nanoseconds since the epoch), or
        why its content must not be stored.

        Runs once per received packet: two dict lookups and a short loop.
        """
        router = self._by_address.get(router_address)
        if router is None:
            return UNKNOWN_ROUTER
        entries = self._by_mirror_id.get(mid & INTERCEPT_ID_MASK)
        if entries is None:
            return NO_INTERCEPT
        reason: DropReason = NO_INTERCEPT
        for rule_sid, router_ids, start, end, rule in entries:
            if rule_sid is not None and rule_sid != sid:
                continue
            if router_ids and router.router_id not in router_ids:
                continue
            if start <= time_ns < end:
                claim: Claim = _new_claim(Claim, (router, rule))
                return claim
            # Claimed by scope but not in force now: another intercept for the same
            # scope in a different window may still be, so keep looking.
            reason = OUTSIDE_WINDOW
        return reason

    def claim_span(
        self, router_address: str, mid: int, sid: int, time_ns: int
    ) -> tuple[Claim | DropReason, int, int]:
        """:meth:`claim`'s answer and the span of receive times ``[low, high)`` around
        ``time_ns`` over which it stays the same (no window of a rule that could claim the
        packet starts or ends inside it), so the receive loop can reuse it per stream
        until a warrant boundary. ``high`` is 2**63 when nothing is due to change."""
        low, high = 0, _FOREVER
        router = self._by_address.get(router_address)
        if router is None:
            return UNKNOWN_ROUTER, low, high
        entries = self._by_mirror_id.get(mid & INTERCEPT_ID_MASK)
        if entries is None:
            return NO_INTERCEPT, low, high
        result: Claim | DropReason = NO_INTERCEPT
        found = False
        for rule_sid, router_ids, start, end, rule in entries:
            if rule_sid is not None and rule_sid != sid:
                continue
            if router_ids and router.router_id not in router_ids:
                continue
            for boundary in (start, end):
                if boundary <= time_ns:
                    low = max(low, boundary)
                else:
                    high = min(high, boundary)
            if found:
                continue
            if start <= time_ns < end:
                result = _new_claim(Claim, (router, rule))
                found = True
            else:
                result = OUTSIDE_WINDOW
        return result, low, high


def _address_index(routers: Iterable[RouterRule]) -> dict[str, RouterRule]:
    """Routers by source address as a socket reports it. A dual-stack (IPv6) listener
    reports an IPv4 router as ``::ffff:a.b.c.d``, so that form is indexed too: the
    lookup stays one dict access per packet."""
    index: dict[str, RouterRule] = {}
    for router in routers:
        index[router.address] = router
        if "." in router.address and ":" not in router.address:
            index[f"::ffff:{router.address}"] = router
    return index

"""The gate: which received packets may have their content stored (sans-I/O, no Django).

A packet's content is stored only when its source is a registered router, an intercept
claims it (intercept id, pinned session id if any, router scope if any), and that
intercept and its case are in force at the packet's receive time. :meth:`Gate.claim`
answers with a :class:`Claim` or with the reason it is dropped.

Two formats, two kinds of intercept. A jmirror datagram (E Series, MX) is claimed by
mirror id (:meth:`Gate.claim`); a Contrail frame (a CN2 vRouter's Juniper header) by
analyzer port, virtual network names and inner addresses (:meth:`Gate.claim_contrail`).
A router is of one kind: a vRouter's jmirror datagram and an MX router's Contrail frame
come from a registered router that no intercept may claim from (the records refuse an
intercept naming a router of the other kind, and an intercept naming none means any
router of its own kind), so they are no_intercept, not unknown_router.

A :class:`Gate` is built once from the records (see ``receiver.gate_loader``) and never
changes: when the records change, the receiver builds a new one and swaps the reference,
so the capture thread never sees a half-updated gate and needs no lock.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from receiver.jmirror import INTERCEPT_ID_MASK

DropReason = Literal["unknown_router", "no_intercept", "outside_window"]
UNKNOWN_ROUTER: Final = "unknown_router"
NO_INTERCEPT: Final = "no_intercept"
OUTSIDE_WINDOW: Final = "outside_window"
DROP_REASONS: Final[tuple[DropReason, ...]] = (UNKNOWN_ROUTER, NO_INTERCEPT, OUTSIDE_WINDOW)

InterceptKind = Literal["jmirror", "cn2"]
JMIRROR: Final = "jmirror"
CN2: Final = "cn2"


@dataclass(frozen=True, slots=True)
class RouterRule:
    """A registered mirror source. ``contrail``: a CN2 vRouter, which sends the Contrail
    Juniper header; every other router sends jmirror."""

    router_id: int
    address: str
    contrail: bool = False


@dataclass(frozen=True, slots=True)
class InterceptRule:
    """What one intercept claims and when.

    ``window`` is the intersection of the intercept's and its case's validity, as
    nanoseconds since the epoch, start included and end excluded (it may be empty).
    ``active`` is whether the case's status is active; ``router_ids`` empty means any
    registered router of the intercept's kind.

    A ``jmirror`` rule claims by ``mirror_id`` (and ``sid`` when pinned). A ``cn2`` rule
    has neither; it claims the Contrail frames that match every one of its claims that
    is given: ``analyzer_port`` (the UDP port the frame was sent to), ``virtual_networks``
    (the frame's source or destination VN is one of them) and ``targets`` (addresses or
    prefixes, as ``ipaddress`` reads them; the inner source or destination address lies
    in one of them).
    """

    intercept_id_pk: int
    liid: str
    case_id: int
    case_reference: str
    mirror_id: int | None
    sid: int | None
    router_ids: frozenset[int]
    window: tuple[int, int]
    active: bool
    keep_content: bool
    kind: InterceptKind = JMIRROR
    analyzer_port: int | None = None
    virtual_networks: frozenset[str] = frozenset()
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The records hold these (jmirror_web.intercepts.models); a rule built otherwise
        # (a test, a benchmark) must not slip a claim past the gate's index.
        if self.kind == JMIRROR:
            if self.mirror_id is None:
                raise ValueError(f"jmirror intercept {self.liid} has no mirror id")
            if self.analyzer_port is not None or self.virtual_networks or self.targets:
                raise ValueError(f"jmirror intercept {self.liid} has Contrail claims")
        elif self.kind == CN2:
            if self.mirror_id is not None or self.sid is not None:
                raise ValueError(f"CN2 intercept {self.liid} has a mirror or session id")
            for target in self.targets:
                ipaddress.ip_network(target)  # ValueError for anything else
        else:
            raise ValueError(f"intercept {self.liid} has an unknown kind {self.kind!r}")


class Claim(NamedTuple):
    """A packet claimed by an intercept: the router it came from and the intercept.

    A named tuple rather than a dataclass: one is made per stored packet, and a tuple is
    the cheapest immutable record to build.
    """

    router: RouterRule
    intercept: InterceptRule


def _specificity(rule: InterceptRule) -> tuple[bool, bool, bool, bool, bool, int, int]:
    # Validation forbids two rules claiming the same packet, so order only matters for
    # determinism: jmirror before CN2, pinned sid (or analyzer port) first, then
    # router-scoped, then narrowed by VN or target, then by window and primary key.
    return (
        rule.kind != JMIRROR,
        rule.sid is None,
        rule.analyzer_port is None,
        not rule.router_ids,
        not (rule.virtual_networks or rule.targets),
        rule.window[0],
        rule.intercept_id_pk,
    )


# What claim() reads of a rule, flattened into a tuple: unpacking one is cheaper than
# reading four attributes. (sid, router_ids, start, end, rule); an inactive case gets an
# empty window, so the loop needs no separate status test.
_Entry = tuple[int | None, frozenset[int], int, int, InterceptRule]


def _entry(rule: InterceptRule) -> _Entry:
    start, end = rule.window if rule.active else (0, 0)
    return (rule.sid, rule.router_ids, start, end, rule)


# An address as a number of its family: (4 or 6, value); ranges are (family, first, last).
_Number = tuple[int, int]
_Range = tuple[int, int, int]

# What claim_contrail() reads of a CN2 rule: (router_ids, virtual networks or None when
# the rule does not claim by VN, exact target addresses as text or None when it does not
# claim by target, target ranges to compare numerically, start, end, rule).
_ContrailEntry = tuple[
    frozenset[int],
    frozenset[str] | None,
    frozenset[str] | None,
    tuple[_Range, ...],
    int,
    int,
    InterceptRule,
]


def _contrail_entry(rule: InterceptRule) -> _ContrailEntry:
    """A CN2 rule with its targets precomputed: a single address (a /32 or /128) goes
    into a set of its text forms, matched by one lookup; a wider prefix into a numeric
    range. The text forms are ``socket.inet_ntop``'s, which the decoders give, and
    ``ipaddress``'s (they differ for IPv4-mapped IPv6 addresses)."""
    start, end = rule.window if rule.active else (0, 0)
    exact: set[str] = set()
    ranges: list[_Range] = []
    for target in rule.targets:
        network = ipaddress.ip_network(target)
        if network.num_addresses == 1:
            address = network.network_address
            exact.add(str(address))
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            exact.add(socket.inet_ntop(family, address.packed))
        else:
            ranges.append(
                (
                    network.version,
                    int(network.network_address),
                    int(network.broadcast_address),
                )
            )
    return (
        rule.router_ids,
        rule.virtual_networks or None,
        frozenset(exact) if rule.targets else None,
        tuple(ranges),
        start,
        end,
        rule,
    )


_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes


def _number(address: str | None) -> _Number | None:
    """``address`` (IPv4 or IPv6 text) as a number of its family; None when it is absent
    or not an address (such a frame matches no target)."""
    if address is None:
        return None
    try:
        if ":" in address:
            return 6, _from_bytes(_inet_pton(socket.AF_INET6, address), "big")
        return 4, _from_bytes(_inet_pton(socket.AF_INET, address), "big")
    except (OSError, ValueError):
        return None


def _in_ranges(numbers: tuple[_Number | None, _Number | None], ranges: tuple[_Range, ...]) -> bool:
    for number in numbers:
        if number is None:
            continue
        family, value = number
        for range_family, first, last in ranges:
            if range_family == family and first <= value <= last:
                return True
    return False


_FOREVER: Final = 2**63
# Builds a Claim without NamedTuple's generated __new__, one Python call less per packet.
_new_claim = tuple.__new__


class Gate:
    """An immutable set of routers and intercept rules, indexed for :meth:`claim` (jmirror)
    and :meth:`claim_contrail` (CN2)."""

    __slots__ = (
        "_by_address",
        "_by_mirror_id",
        "_contrail_any_port",
        "_contrail_by_address",
        "_contrail_by_port",
        "_registered",
        "intercepts",
        "routers",
    )
    routers: tuple[RouterRule, ...]
    intercepts: tuple[InterceptRule, ...]
    _by_address: dict[str, RouterRule]
    _by_mirror_id: dict[int, tuple[_Entry, ...]]
    _contrail_by_address: dict[str, RouterRule]
    _contrail_by_port: dict[int, tuple[_ContrailEntry, ...]]
    _contrail_any_port: tuple[_ContrailEntry, ...]
    _registered: frozenset[str]

    def __init__(self, routers: Iterable[RouterRule], intercepts: Iterable[InterceptRule]):
        ordered = tuple(sorted(intercepts, key=_specificity))
        by_mirror_id: dict[int, list[_Entry]] = {}
        contrail: list[InterceptRule] = []
        for rule in ordered:
            if rule.kind == CN2:
                contrail.append(rule)
            elif rule.mirror_id is not None:  # always, for jmirror (InterceptRule checks)
                by_mirror_id.setdefault(rule.mirror_id, []).append(_entry(rule))
        # Per analyzer port, the rules on that port and those on any port, in the order
        # above; a port no rule names gets the latter alone.
        any_port = tuple(_contrail_entry(rule) for rule in contrail if rule.analyzer_port is None)
        by_port = {
            port: tuple(
                _contrail_entry(rule)
                for rule in contrail
                if rule.analyzer_port is None or rule.analyzer_port == port
            )
            for port in {rule.analyzer_port for rule in contrail} - {None}
            if port is not None
        }
        routers = tuple(routers)
        by_address = _address_index(router for router in routers if not router.contrail)
        contrail_by_address = _address_index(router for router in routers if router.contrail)
        # Set once through object.__setattr__: __setattr__ below refuses later changes.
        object.__setattr__(self, "routers", routers)
        object.__setattr__(self, "intercepts", ordered)
        object.__setattr__(self, "_by_address", by_address)
        object.__setattr__(
            self,
            "_by_mirror_id",
            {mirror_id: tuple(rules) for mirror_id, rules in by_mirror_id.items()},
        )
        object.__setattr__(self, "_contrail_by_address", contrail_by_address)
        object.__setattr__(self, "_contrail_by_port", by_port)
        object.__setattr__(self, "_contrail_any_port", any_port)
        object.__setattr__(self, "_registered", frozenset(by_address) | set(contrail_by_address))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Gate cannot be changed (setting {name!r}); build a new one")

    def __repr__(self) -> str:
        return f"<Gate: {len(self.routers)} routers, {len(self.intercepts)} intercepts>"

    @property
    def mirror_ids(self) -> tuple[int, ...]:
        """The intercept ids some rule claims: a registered router's datagram with any
        other (``mid & INTERCEPT_ID_MASK``) is no_intercept, whatever its sid and time."""
        return tuple(self._by_mirror_id)

    @property
    def analyzer_ports(self) -> frozenset[int]:
        """The analyzer ports CN2 rules name. When no CN2 rule claims on any port (an
        intercept without an analyzer port), a Contrail frame sent to another port is
        no_intercept, whatever else it carries."""
        return frozenset(self._contrail_by_port)

    def _unregistered(self, source: str) -> DropReason:
        # A router of the other kind is registered, but no intercept may claim from it.
        return NO_INTERCEPT if source in self._registered else UNKNOWN_ROUTER

    def claim(self, router_address: str, mid: int, sid: int, time_ns: int) -> Claim | DropReason:
        """The claim on a packet from ``router_address`` with jmirror header ``mid`` (raw
        32 bits) and ``sid``, received at ``time_ns`` (nanoseconds since the epoch), or
        why its content must not be stored.

        Runs once per received packet: two dict lookups and a short loop.
        """
        router = self._by_address.get(router_address)
        if router is None:
            return self._unregistered(router_address)
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
            return self._unregistered(router_address), low, high
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

    def claim_contrail(
        self,
        source: str,
        port: int,
        source_vn: str | None,
        dest_vn: str | None,
        inner_src: str | None,
        inner_dst: str | None,
        time_ns: int,
    ) -> Claim | DropReason:
        """The claim on a Contrail frame from ``source`` (the outer source address) sent
        to UDP ``port`` of this host, carrying the VN names of TLVs 3 and 4 (None when
        absent) and the inner IP addresses (None when the frame is not IP), received at
        ``time_ns``; or why its content must not be stored: unknown_router (no router has
        that address), no_intercept (no CN2 rule claims the frame, or the source is not a
        vRouter), outside_window (one does, but neither it nor its case is in force).

        Addresses are matched as text against a target that is one address, in
        ``socket.inet_ntop``'s form (what the decoders give), and numerically against a
        wider prefix. Runs once per frame: two dict lookups and a loop over the CN2 rules
        that could claim on ``port``.
        """
        router = self._contrail_by_address.get(source)
        if router is None:
            return self._unregistered(source)
        entries = self._contrail_by_port.get(port, self._contrail_any_port)
        reason: DropReason = NO_INTERCEPT
        numbers: tuple[_Number | None, _Number | None] | None = None
        for router_ids, networks, exact, ranges, start, end, rule in entries:
            if router_ids and router.router_id not in router_ids:
                continue
            if networks is not None and source_vn not in networks and dest_vn not in networks:
                continue
            if exact is not None and inner_src not in exact and inner_dst not in exact:
                if not ranges:
                    continue
                if numbers is None:
                    numbers = (_number(inner_src), _number(inner_dst))
                if not _in_ranges(numbers, ranges):
                    continue
            if start <= time_ns < end:
                claim: Claim = _new_claim(Claim, (router, rule))
                return claim
            reason = OUTSIDE_WINDOW
        return reason

    def claim_contrail_span(
        self,
        source: str,
        port: int,
        source_vn: str | None,
        dest_vn: str | None,
        inner_src: str | None,
        inner_dst: str | None,
        time_ns: int,
    ) -> tuple[Claim | DropReason, int, int, bool]:
        """:meth:`claim_contrail`'s answer, the span of receive times ``[low, high)``
        over which it stays the same for frames of the same source, port, VN names and
        addresses, and whether it holds for *every* frame of the stream (source, port)
        in that span, whatever its VN names and addresses.

        The last is true when no CN2 rule that could claim from this router on this port
        claims by VN or target: the receive loop may then keep the answer per (source,
        port), as it keeps :meth:`claim_span`'s per jmirror stream. Otherwise the answer
        depends on each frame's fields, and a cache must key on them too (or ask per
        frame).
        """
        low, high = 0, _FOREVER
        router = self._contrail_by_address.get(source)
        if router is None:
            return self._unregistered(source), low, high, True
        entries = self._contrail_by_port.get(port, self._contrail_any_port)
        result: Claim | DropReason = NO_INTERCEPT
        found = False
        whole_stream = True
        numbers: tuple[_Number | None, _Number | None] | None = None
        for router_ids, networks, exact, ranges, start, end, rule in entries:
            if router_ids and router.router_id not in router_ids:
                continue
            if networks is not None or exact is not None:
                whole_stream = False
            if networks is not None and source_vn not in networks and dest_vn not in networks:
                continue
            if exact is not None and inner_src not in exact and inner_dst not in exact:
                if not ranges:
                    continue
                if numbers is None:
                    numbers = (_number(inner_src), _number(inner_dst))
                if not _in_ranges(numbers, ranges):
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
        return result, low, high, whole_stream


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

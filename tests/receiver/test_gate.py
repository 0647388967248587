import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.gate import Claim, Gate, InterceptRule, RouterRule

SECOND = 1_000_000_000
START = 1_795_000_000 * SECOND
END = START + 3600 * SECOND
DURING = START + 60 * SECOND

ROUTER = RouterRule(1, "192.0.2.1")
OTHER_ROUTER = RouterRule(2, "2001:db8::2")


def rule(**fields) -> InterceptRule:
    values = {
        "intercept_id_pk": 10,
        "liid": "LIID-1",
        "case_id": 100,
        "case_reference": "CASE-1",
        "mirror_id": 0x300,
        "sid": None,
        "router_ids": frozenset(),
        "window": (START, END),
        "active": True,
        "keep_content": True,
    }
    values.update(fields)
    return InterceptRule(**values)


def gate(*rules: InterceptRule) -> Gate:
    return Gate([ROUTER, OTHER_ROUTER], rules)


def test_it_claims_a_packet_from_a_registered_router_for_an_intercept_in_force():
    intercept = rule()
    assert gate(intercept).claim("192.0.2.1", 0x300, 0x90, DURING) == Claim(ROUTER, intercept)


def test_it_drops_a_packet_from_an_unregistered_source():
    assert gate(rule()).claim("192.0.2.99", 0x300, 0x90, DURING) == "unknown_router"


def test_it_drops_a_packet_no_intercept_claims():
    assert gate(rule()).claim("192.0.2.1", 0x301, 0x90, DURING) == "no_intercept"


def test_it_ignores_the_version_bits_when_matching_the_intercept_id():
    intercept = rule()
    claim = gate(intercept).claim("192.0.2.1", (1 << 30) | 0x300, 0x90, DURING)
    assert claim == Claim(ROUTER, intercept)


@pytest.mark.parametrize(
    "time_ns", [START - 1, END, END + SECOND], ids=["before", "at the end", "after"]
)
def test_it_drops_packets_outside_the_warrant_window(time_ns):
    assert gate(rule()).claim("192.0.2.1", 0x300, 0x90, time_ns) == "outside_window"


def test_it_claims_a_packet_at_the_first_nanosecond_of_the_window():
    assert isinstance(gate(rule()).claim("192.0.2.1", 0x300, 0x90, START), Claim)


def test_it_drops_packets_of_a_case_that_is_not_active():
    assert gate(rule(active=False)).claim("192.0.2.1", 0x300, 0x90, DURING) == "outside_window"


def test_a_pinned_session_id_claims_only_that_session():
    pinned = gate(rule(sid=0x90))
    assert isinstance(pinned.claim("192.0.2.1", 0x300, 0x90, DURING), Claim)
    assert pinned.claim("192.0.2.1", 0x300, 0x91, DURING) == "no_intercept"


def test_a_router_scope_claims_only_packets_from_those_routers():
    scoped = gate(rule(router_ids=frozenset({2})))
    assert scoped.claim("2001:db8::2", 0x300, 0x90, DURING) == Claim(
        OTHER_ROUTER, scoped.intercepts[0]
    )
    assert scoped.claim("192.0.2.1", 0x300, 0x90, DURING) == "no_intercept"


def test_an_intercept_in_force_wins_over_an_earlier_one_for_the_same_scope():
    earlier = rule(intercept_id_pk=1, liid="OLD", window=(START - 10 * SECOND, START))
    current = rule(intercept_id_pk=2, liid="NEW")
    claim = gate(earlier, current).claim("192.0.2.1", 0x300, 0x90, DURING)
    assert isinstance(claim, Claim)
    assert claim.intercept.liid == "NEW"


def test_it_puts_pinned_session_rules_before_unpinned_ones():
    unpinned = rule(intercept_id_pk=1, liid="ALL", window=(START, START + SECOND))
    pinned = rule(intercept_id_pk=2, liid="PINNED", sid=0x90, window=(DURING, END))
    built = gate(unpinned, pinned)
    assert [each.liid for each in built.intercepts] == ["PINNED", "ALL"]
    claim = built.claim("192.0.2.1", 0x300, 0x90, DURING)
    assert isinstance(claim, Claim)
    assert claim.intercept.liid == "PINNED"


def test_an_empty_window_never_claims():
    assert gate(rule(window=(END, START))).claim("192.0.2.1", 0x300, 0x90, DURING) == (
        "outside_window"
    )


def test_a_claim_carries_whether_to_keep_content():
    claim = gate(rule(keep_content=False)).claim("192.0.2.1", 0x300, 0x90, DURING)
    assert isinstance(claim, Claim)
    assert claim.intercept.keep_content is False


def test_the_gate_and_its_rules_cannot_be_changed():
    built = gate(rule())
    with pytest.raises(AttributeError):
        built.routers = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.intercepts[0].active = False  # type: ignore[misc]


def test_an_empty_gate_drops_everything_as_unknown_router():
    assert Gate([], []).claim("192.0.2.1", 0x300, 0x90, DURING) == "unknown_router"


def test_an_ipv4_router_is_recognised_through_a_dual_stack_listener():
    claim = gate(rule()).claim("::ffff:192.0.2.1", 0x300, 0x90, DURING)
    assert isinstance(claim, Claim)
    assert claim.router == ROUTER


def test_an_ipv4_mapped_form_of_another_address_stays_unknown():
    assert gate(rule()).claim("::ffff:192.0.2.99", 0x300, 0x90, DURING) == "unknown_router"


# claim_span: the same answer as claim(), and the same answer anywhere in its span.
_windows = st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted).map(tuple)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(_windows, st.sampled_from([None, 0x90, 0x91]), st.booleans(), st.booleans()),
        max_size=5,
    ),
    st.sampled_from(["192.0.2.1", "2001:db8::2", "198.51.100.9"]),
    st.sampled_from([0x300, 0x40000300, 0x301]),
    st.sampled_from([0x90, 0x91]),
    st.integers(0, 110),
    st.integers(0, 110),
)
def test_claim_span_agrees_with_claim_throughout_its_span(
    specs, source, mid, sid, time_ns, other_time
):
    rules = [
        rule(
            intercept_id_pk=index + 1,
            liid=f"L{index}",
            window=window,
            sid=pinned,
            router_ids=frozenset({1}) if scoped else frozenset(),
            active=active,
        )
        for index, (window, pinned, scoped, active) in enumerate(specs)
    ]
    checked = Gate([ROUTER, OTHER_ROUTER], rules)
    result, low, high = checked.claim_span(source, mid, sid, time_ns)
    assert result == checked.claim(source, mid, sid, time_ns)
    assert low <= time_ns < high
    if low <= other_time < high:
        assert checked.claim(source, mid, sid, other_time) == result

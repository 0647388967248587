"""The gate's CN2 side: Contrail frames claimed by analyzer port, virtual network and
target address, with the drop reasons and spans of the jmirror side."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.gate import Claim, Gate, InterceptRule, RouterRule

SECOND = 1_000_000_000
START = 1_795_000_000 * SECOND
END = START + 3600 * SECOND
DURING = START + 60 * SECOND

VROUTER = RouterRule(1, "192.0.2.1", contrail=True)
OTHER_VROUTER = RouterRule(2, "2001:db8::2", contrail=True)
MX = RouterRule(3, "192.0.2.3")
PORT = 8099


def cn2(**fields) -> InterceptRule:
    values = {
        "intercept_id_pk": 10,
        "liid": "CN2-1",
        "case_id": 100,
        "case_reference": "CASE-1",
        "mirror_id": None,
        "sid": None,
        "router_ids": frozenset(),
        "window": (START, END),
        "active": True,
        "keep_content": True,
        "kind": "cn2",
        "analyzer_port": PORT,
    }
    values.update(fields)
    return InterceptRule(**values)


def jmirror(**fields) -> InterceptRule:
    values = {
        "intercept_id_pk": 20,
        "liid": "JM-1",
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
    return Gate([VROUTER, OTHER_VROUTER, MX], rules)


def claim(
    built: Gate,
    *,
    source: str = "192.0.2.1",
    port: int = PORT,
    source_vn: str | None = "vn-red",
    dest_vn: str | None = "vn-blue",
    src: str | None = "10.0.0.1",
    dst: str | None = "10.0.0.2",
    time_ns: int = DURING,
) -> Claim | str:
    return built.claim_contrail(source, port, source_vn, dest_vn, src, dst, time_ns)


def test_a_port_claim_takes_every_frame_sent_to_that_port():
    rule = cn2()
    assert claim(gate(rule)) == Claim(VROUTER, rule)
    assert claim(gate(rule), source_vn=None, dest_vn=None, src=None, dst=None) == Claim(
        VROUTER, rule
    )


def test_a_frame_sent_to_another_port_is_not_claimed():
    assert claim(gate(cn2()), port=8100) == "no_intercept"


def test_a_frame_from_an_unregistered_source_is_unknown_router():
    assert claim(gate(cn2()), source="192.0.2.99") == "unknown_router"


def test_a_contrail_frame_from_a_jmirror_router_is_no_intercept():
    assert claim(gate(cn2()), source="192.0.2.3") == "no_intercept"


def test_a_jmirror_datagram_from_a_vrouter_is_no_intercept_not_unknown_router():
    built = gate(jmirror())
    assert built.claim("192.0.2.1", 0x300, 0x90, DURING) == "no_intercept"
    assert built.claim_span("192.0.2.1", 0x300, 0x90, DURING) == ("no_intercept", 0, 2**63)
    assert built.claim("192.0.2.3", 0x300, 0x90, DURING) == Claim(MX, built.intercepts[0])


def test_jmirror_rules_do_not_claim_contrail_frames_nor_cn2_rules_jmirror_datagrams():
    built = gate(jmirror(), cn2())
    assert built.mirror_ids == (0x300,)
    assert built.analyzer_ports == frozenset({PORT})
    assert claim(built, port=8100) == "no_intercept"


@pytest.mark.parametrize(
    ("time_ns", "active"),
    [(START - 1, True), (END, True), (DURING, False)],
    ids=["before", "at the end", "case not active"],
)
def test_a_matching_frame_outside_the_window_is_outside_window(time_ns, active):
    assert claim(gate(cn2(active=active)), time_ns=time_ns) == "outside_window"


def test_a_frame_is_claimed_at_the_first_nanosecond_of_the_window():
    assert isinstance(claim(gate(cn2()), time_ns=START), Claim)


def test_a_rule_without_a_port_claims_on_every_port():
    rule = cn2(analyzer_port=None, virtual_networks=frozenset({"vn-red"}))
    assert claim(gate(rule), port=1) == Claim(VROUTER, rule)
    assert gate(rule).analyzer_ports == frozenset()


def test_a_rule_on_any_port_is_also_tried_on_a_port_another_rule_names():
    on_port = cn2(intercept_id_pk=1, liid="ON-PORT", router_ids=frozenset({2}))
    anywhere = cn2(
        intercept_id_pk=2, liid="ANYWHERE", analyzer_port=None, router_ids=frozenset({1})
    )
    built = gate(on_port, anywhere)
    assert claim(built) == Claim(VROUTER, anywhere)
    assert claim(built, source="2001:db8::2") == Claim(OTHER_VROUTER, on_port)


@pytest.mark.parametrize(
    ("source_vn", "dest_vn", "claimed"),
    [
        ("vn-red", "vn-blue", True),
        ("vn-blue", "vn-red", True),
        ("vn-red", None, True),  # interface mirroring of received traffic: TLV 3 only
        (None, "vn-red", True),  # sent traffic: TLV 4 only
        ("vn-green", "vn-blue", False),
        (None, None, False),  # no metadata
        ("VN-RED", None, False),  # names are compared exactly
    ],
)
def test_a_vn_claim_takes_frames_whose_source_or_destination_vn_is_listed(
    source_vn, dest_vn, claimed
):
    rule = cn2(virtual_networks=frozenset({"vn-red", "vn-yellow"}))
    result = claim(gate(rule), source_vn=source_vn, dest_vn=dest_vn)
    assert result == (Claim(VROUTER, rule) if claimed else "no_intercept")


@pytest.mark.parametrize(
    ("targets", "src", "dst", "claimed"),
    [
        (("10.0.0.1",), "10.0.0.1", "10.0.0.2", True),
        (("10.0.0.1",), "10.0.0.2", "10.0.0.1", True),
        (("10.0.0.1",), "10.0.0.3", "10.0.0.2", False),
        (("10.0.0.0/30",), "10.0.0.3", "192.0.2.9", True),
        (("10.0.0.0/30",), "10.0.0.4", "192.0.2.9", False),
        (("10.0.0.0/30",), "192.0.2.9", "10.0.0.0", True),
        (("2001:db8:1::/48",), "2001:db8:1:ffff::1", "2001:db8::9", True),
        (("2001:db8:1::/48",), "2001:db8:2::1", "2001:db8::9", False),
        (("2001:db8::5",), "2001:db8::9", "2001:db8::5", True),
        # inet_ntop's form of an IPv4-mapped address, which ipaddress writes otherwise
        (("::ffff:10.0.0.1",), "::ffff:10.0.0.1", "10.0.0.2", True),
        # one family's prefix never holds the other family's address
        (("0.0.0.0/0",), "2001:db8::9", "2001:db8::5", False),
        (("::/0",), "10.0.0.1", "10.0.0.2", False),
        (("::/0",), "2001:db8::9", None, True),
        (("10.0.0.0/8",), None, None, False),  # not IP
        (("10.0.0.0/8",), "junk", "also junk", False),
        (("10.0.0.9", "10.1.0.0/16"), "10.1.2.3", None, True),
    ],
)
def test_a_target_claim_takes_frames_whose_inner_source_or_destination_is_inside_one(
    targets, src, dst, claimed
):
    rule = cn2(targets=targets)
    result = claim(gate(rule), src=src, dst=dst)
    assert result == (Claim(VROUTER, rule) if claimed else "no_intercept")


def test_claims_given_together_must_all_match():
    rule = cn2(virtual_networks=frozenset({"vn-red"}), targets=("10.0.0.1",))
    built = gate(rule)
    assert claim(built) == Claim(VROUTER, rule)
    assert claim(built, source_vn="vn-green") == "no_intercept"
    assert claim(built, src="10.9.9.9") == "no_intercept"
    assert claim(built, port=1) == "no_intercept"


def test_a_router_scope_claims_only_frames_from_those_vrouters():
    rule = cn2(router_ids=frozenset({2}))
    built = gate(rule)
    assert claim(built) == "no_intercept"
    assert claim(built, source="2001:db8::2") == Claim(OTHER_VROUTER, rule)


def test_an_ipv4_vrouter_is_recognised_through_a_dual_stack_listener():
    assert claim(gate(cn2()), source="::ffff:192.0.2.1") == Claim(VROUTER, cn2())


def test_a_rule_in_force_wins_over_an_earlier_one_for_the_same_frame():
    earlier = cn2(intercept_id_pk=1, liid="OLD", window=(START - 10 * SECOND, START))
    current = cn2(intercept_id_pk=2, liid="NEW")
    result = claim(gate(earlier, current))
    assert isinstance(result, Claim)
    assert result.intercept.liid == "NEW"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mirror_id": 0x300}, "has a mirror or session id"),
        ({"sid": 0x90}, "has a mirror or session id"),
        ({"targets": ("10.0.0.0/33",)}, "10.0.0.0/33"),
        ({"targets": ("10.0.0.1/24",)}, "host bits set"),
        ({"kind": "vxlan"}, "unknown kind"),
    ],
)
def test_a_cn2_rule_with_a_jmirror_claim_or_a_bad_target_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        cn2(**fields)


@pytest.mark.parametrize(
    "fields",
    [{"mirror_id": None}, {"analyzer_port": PORT}, {"targets": ("10.0.0.1",)}],
)
def test_a_jmirror_rule_without_a_mirror_id_or_with_contrail_claims_is_refused(fields):
    with pytest.raises(ValueError, match="jmirror intercept JM-1"):
        jmirror(**fields)


def test_the_rules_keep_their_order_jmirror_first():
    built = gate(cn2(intercept_id_pk=1, liid="C"), jmirror(intercept_id_pk=2))
    assert [rule.liid for rule in built.intercepts] == ["JM-1", "C"]


# claim_contrail_span: the same answer as claim_contrail, the same anywhere in its span
# for the same frame fields, and for every frame of the stream when it says so.
_windows = st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted).map(tuple)
_vns = st.sampled_from(["red", "blue", None])
_addresses = st.sampled_from(["10.0.0.1", "10.0.1.7", "2001:db8::5", None])
_frames = st.tuples(_vns, _vns, _addresses, _addresses)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            _windows,
            st.sampled_from([None, 8099, 8100]),
            st.sampled_from([frozenset(), frozenset({"red"})]),
            st.sampled_from([(), ("10.0.0.1",), ("10.0.1.0/24", "2001:db8::/64")]),
            st.booleans(),
            st.booleans(),
        ),
        max_size=5,
    ),
    st.sampled_from(["192.0.2.1", "2001:db8::2", "192.0.2.3", "198.51.100.9"]),
    st.sampled_from([8099, 8100, 9000]),
    _frames,
    _frames,
    st.integers(0, 110),
    st.integers(0, 110),
)
def test_claim_contrail_span_agrees_with_claim_contrail_throughout_its_span(
    specs, source, port, frame, other_frame, time_ns, other_time
):
    rules = [
        cn2(
            intercept_id_pk=index + 1,
            liid=f"L{index}",
            window=window,
            analyzer_port=analyzer_port,
            virtual_networks=networks,
            targets=targets,
            router_ids=frozenset({1}) if scoped else frozenset(),
            active=active,
        )
        for index, (window, analyzer_port, networks, targets, scoped, active) in enumerate(specs)
    ]
    checked = gate(*rules)
    result, low, high, whole_stream = checked.claim_contrail_span(source, port, *frame, time_ns)
    assert result == checked.claim_contrail(source, port, *frame, time_ns)
    assert low <= time_ns < high
    if low <= other_time < high:
        assert checked.claim_contrail(source, port, *frame, other_time) == result
        if whole_stream:
            assert checked.claim_contrail(source, port, *other_frame, other_time) == result


def test_a_span_is_for_the_whole_stream_only_when_no_rule_claims_by_vn_or_target():
    assert gate(cn2()).claim_contrail_span("192.0.2.1", PORT, None, None, None, None, DURING)[3]
    by_vn = gate(cn2(virtual_networks=frozenset({"red"})))
    assert not by_vn.claim_contrail_span("192.0.2.1", PORT, "red", None, None, None, DURING)[3]
    # a rule for another vRouter does not make this one's answer depend on the frame
    other = gate(cn2(router_ids=frozenset({2}), targets=("10.0.0.1",)))
    assert other.claim_contrail_span("192.0.2.1", PORT, None, None, None, None, DURING) == (
        "no_intercept",
        0,
        2**63,
        True,
    )


def test_target_matching_precomputes_single_addresses_as_text():
    # Many single-address targets are one set lookup, whatever their number.
    targets = tuple(str(ipaddress.IPv4Address(0x0A000000 + n)) for n in range(64))
    built = gate(cn2(targets=targets))
    assert isinstance(claim(built, src="10.0.0.63", dst=None), Claim)
    assert claim(built, src="10.0.0.64", dst=None) == "no_intercept"

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jmirror_web.intercepts.provisioning import (
    AUTHENTICATION_INFO_PLACEHOLDER,
    MIRROR_ID_MAX,
    SESSION_ID_MAX,
    DtcpMessage,
    DtcpTrigger,
    ErxAttribute,
    LiAction,
    MedDevHandle,
    ProvisioningError,
    RadiusAttribute,
    dtcp_add,
    dtcp_delete_by_cdest_id,
    dtcp_delete_by_criteria_id,
    dtcp_list,
    freeradius_text,
    radius_mirroring_attributes,
)


def error_of(build: Callable[[], object]) -> str:
    with pytest.raises(ProvisioningError) as raised:
        build()
    return str(raised.value)


# ERX-Med-Dev-Handle


def test_juniper_8_byte_example_is_mirror_id_0x300_with_session_id_0x90() -> None:
    handle = MedDevHandle.from_hex("0000030000000090")

    assert handle == MedDevHandle(mirror_id=0x300, sid=0x90)
    assert not handle.sid_from_acct_session_id
    assert handle.describe() == "mirror id 0x300, session id 0x90"


def test_juniper_4_byte_example_is_mirror_id_0x10_with_session_id_from_acct_session_id() -> None:
    handle = MedDevHandle.from_hex("40000010")

    assert handle == MedDevHandle(mirror_id=0x10, sid=None)
    assert handle.sid_from_acct_session_id
    assert handle.describe() == (
        "mirror id 0x10, session id from the low 32 bits of Acct-Session-Id"
    )


@pytest.mark.parametrize(
    ("handle", "hex_text", "octets"),
    [
        pytest.param(
            MedDevHandle(0x300, 0x90),
            "0000030000000090",
            b"\x00\x00\x03\x00\x00\x00\x00\x90",
            id="8-byte",
        ),
        pytest.param(MedDevHandle(0x10), "40000010", b"\x40\x00\x00\x10", id="4-byte"),
    ],
)
def test_juniper_examples_encode_back_to_the_same_bytes(
    handle: MedDevHandle, hex_text: str, octets: bytes
) -> None:
    assert handle.to_hex() == hex_text
    assert handle.to_bytes() == octets
    assert MedDevHandle.from_bytes(octets) == handle


def test_a_pinned_session_id_of_zero_still_gives_the_8_byte_form() -> None:
    assert MedDevHandle(0x8000, 0).to_hex() == "0000800000000000"


def test_the_largest_ids_fit_both_forms() -> None:
    assert MedDevHandle(MIRROR_ID_MAX, SESSION_ID_MAX).to_hex() == "3fffffffffffffff"
    assert MedDevHandle(MIRROR_ID_MAX).to_hex() == "7fffffff"


@pytest.mark.parametrize(
    "text",
    [
        "0000030000000090",
        "0x0000030000000090",
        "0X0000030000000090",
        "  0000030000000090\n",
        "00000300 00000090",
        "00:00:03:00:00:00:00:90",
        "0x00 00 03 00 00 00 00 90",
    ],
)
def test_hex_is_accepted_with_prefix_any_case_spaces_and_colons(text: str) -> None:
    assert MedDevHandle.from_hex(text) == MedDevHandle(0x300, 0x90)


def test_upper_case_hex_digits_decode_like_lower_case() -> None:
    assert MedDevHandle.from_hex("7FFFFFFF") == MedDevHandle(MIRROR_ID_MAX)


@given(
    mirror_id=st.integers(0, MIRROR_ID_MAX),
    sid=st.none() | st.integers(0, SESSION_ID_MAX),
)
def test_any_handle_survives_encoding_and_decoding(mirror_id: int, sid: int | None) -> None:
    handle = MedDevHandle(mirror_id, sid)

    assert MedDevHandle.from_bytes(handle.to_bytes()) == handle
    assert MedDevHandle.from_hex(handle.to_hex()) == handle
    assert len(handle.to_bytes()) == (4 if sid is None else 8)


@given(
    octets=st.one_of(
        # Top bits forced to 01 (4-byte form) or 00 (8-byte form); the rest is anything.
        st.binary(min_size=4, max_size=4).map(lambda b: bytes([b[0] & 0x3F | 0x40]) + b[1:]),
        st.binary(min_size=8, max_size=8).map(lambda b: bytes([b[0] & 0x3F]) + b[1:]),
    )
)
def test_any_well_formed_attribute_decodes_and_encodes_to_the_same_bytes(octets: bytes) -> None:
    assert MedDevHandle.from_bytes(octets).to_bytes() == octets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "ERX-Med-Dev-Handle is empty", id="empty"),
        pytest.param("0x", "ERX-Med-Dev-Handle is empty", id="prefix only"),
        pytest.param(
            "000003",
            "ERX-Med-Dev-Handle must be 4 or 8 bytes long, got 3",
            id="3 bytes",
        ),
        pytest.param(
            "4000001000",
            "ERX-Med-Dev-Handle must be 4 or 8 bytes long, got 5",
            id="5 bytes",
        ),
        pytest.param(
            "000003000000009000",
            "ERX-Med-Dev-Handle must be 4 or 8 bytes long, got 9",
            id="9 bytes",
        ),
        pytest.param(
            "80000010",
            "ERX-Med-Dev-Handle starts with bits 10: "
            "only 00 (8-byte form) and 01 (4-byte form) exist",
            id="top bits 10",
        ),
        pytest.param(
            "c000030000000090",
            "ERX-Med-Dev-Handle starts with bits 11: "
            "only 00 (8-byte form) and 01 (4-byte form) exist",
            id="top bits 11",
        ),
        pytest.param(
            "00000010",
            "ERX-Med-Dev-Handle starts with bits 00 (the 8-byte form) but is 4 bytes long",
            id="8-byte bits in 4 bytes",
        ),
        pytest.param(
            "4000001000000090",
            "ERX-Med-Dev-Handle starts with bits 01 (the 4-byte form) but is 8 bytes long",
            id="4-byte bits in 8 bytes",
        ),
        pytest.param(
            "4000001",
            "ERX-Med-Dev-Handle '4000001' has an odd number of hex digits (7)",
            id="odd",
        ),
        pytest.param(
            "4000001g",
            "ERX-Med-Dev-Handle '4000001g' contains 'g', which is not a hex digit",
            id="non-hex letter",
        ),
        pytest.param(
            "0x0x40000010",
            "ERX-Med-Dev-Handle '0x0x40000010' contains 'x', which is not a hex digit",
            id="two prefixes",
        ),
        pytest.param(
            "4000_0010",
            "ERX-Med-Dev-Handle '4000_0010' contains '_', which is not a hex digit",
            id="underscore, which int() would take",
        ),
        pytest.param(
            "4000-0010",
            "ERX-Med-Dev-Handle '4000-0010' contains '-', which is not a hex digit",
            id="dash",
        ),
        pytest.param(
            "4000\t0010",
            "ERX-Med-Dev-Handle '4000\\t0010' contains '\\t', which is not a hex digit",
            id="inner tab",
        ),
        pytest.param(
            "\uff140000010",
            "ERX-Med-Dev-Handle '\uff140000010' contains '\uff14', which is not a hex digit",
            id="full-width digit",
        ),
    ],
)
def test_bad_hex_is_rejected_with_the_reason(text: str, message: str) -> None:
    assert error_of(lambda: MedDevHandle.from_hex(text)) == message


def test_bytes_of_the_wrong_length_are_rejected() -> None:
    assert error_of(lambda: MedDevHandle.from_bytes(b"")) == (
        "ERX-Med-Dev-Handle must be 4 or 8 bytes long, got 0"
    )


@pytest.mark.parametrize(
    ("mirror_id", "sid", "message"),
    [
        pytest.param(
            -1, None, "mirror id must be in 0..1073741823 (30 bits), got -1", id="negative"
        ),
        pytest.param(
            MIRROR_ID_MAX + 1,
            None,
            "mirror id must be in 0..1073741823 (30 bits), got 1073741824",
            id="31 bits",
        ),
        pytest.param(
            0x300, -1, "session id must be in 0..4294967295 (32 bits), got -1", id="sid negative"
        ),
        pytest.param(
            0x300,
            SESSION_ID_MAX + 1,
            "session id must be in 0..4294967295 (32 bits), got 4294967296",
            id="sid 33 bits",
        ),
        pytest.param(True, None, "mirror id must be an integer, got True", id="bool"),
        pytest.param("768", None, "mirror id must be an integer, got '768'", id="text"),
        pytest.param(0x300, 1.0, "session id must be an integer, got 1.0", id="sid float"),
    ],
)
def test_ids_out_of_range_are_rejected(mirror_id: Any, sid: Any, message: str) -> None:
    assert error_of(lambda: MedDevHandle(mirror_id, sid)) == message


# RADIUS


def test_start_with_a_pinned_session_id_gives_the_four_vsas_in_8_byte_form() -> None:
    attributes = radius_mirroring_attributes(
        LiAction.START, MedDevHandle(0x300, 0x90), "198.51.100.10", 30030
    )

    assert [(a.number, a.name, a.value) for a in attributes] == [
        ("26-58", "ERX-LI-Action", "1"),
        ("26-59", "ERX-Med-Dev-Handle", "0x0000030000000090"),
        ("26-60", "ERX-Med-Ip-Address", "198.51.100.10"),
        ("26-61", "ERX-Med-Port-Number", "30030"),
    ]
    assert freeradius_text(attributes) == (
        "ERX-LI-Action = 1\n"
        "ERX-Med-Dev-Handle = 0x0000030000000090\n"
        "ERX-Med-Ip-Address = 198.51.100.10\n"
        "ERX-Med-Port-Number = 30030\n"
    )


def test_start_without_a_session_id_uses_the_4_byte_form() -> None:
    attributes = radius_mirroring_attributes(
        LiAction.START, MedDevHandle(0x10), ipaddress.IPv4Address("192.0.2.7"), 6502
    )

    assert freeradius_text(attributes) == (
        "ERX-LI-Action = 1\n"
        "ERX-Med-Dev-Handle = 0x40000010\n"
        "ERX-Med-Ip-Address = 192.0.2.7\n"
        "ERX-Med-Port-Number = 6502\n"
    )


@pytest.mark.parametrize(
    ("action", "value"),
    [(LiAction.STOP, "0"), (LiAction.START, "1"), (LiAction.NO_OP, "2"), (0, "0")],
)
def test_stop_and_no_op_still_carry_all_four_attributes(action: LiAction, value: str) -> None:
    attributes = radius_mirroring_attributes(action, MedDevHandle(0x8000), "192.0.2.7", 5000)

    assert [a.vendor_type for a in attributes] == [
        ErxAttribute.LI_ACTION,
        ErxAttribute.MED_DEV_HANDLE,
        ErxAttribute.MED_IP_ADDRESS,
        ErxAttribute.MED_PORT_NUMBER,
    ]
    assert attributes[0] == RadiusAttribute(ErxAttribute.LI_ACTION, "ERX-LI-Action", value)
    assert [a.value for a in attributes[1:]] == ["0x40008000", "192.0.2.7", "5000"]


@pytest.mark.parametrize(
    ("address", "port", "message"),
    [
        pytest.param(
            "2001:db8::10",
            30030,
            "mediation address 2001:db8::10 is IPv6: ERX-Med-Ip-Address carries an IPv4 "
            "address only",
            id="IPv6",
        ),
        pytest.param(
            "mediation.example",
            30030,
            "mediation address 'mediation.example' is not an IP address",
            id="host name",
        ),
        pytest.param(
            "198.51.100.10 ",
            30030,
            "mediation address '198.51.100.10 ' is not an IP address",
            id="trailing space",
        ),
        pytest.param(
            "0.0.0.0",  # noqa: S104 - the point is to reject it
            30030,
            "mediation address 0.0.0.0 is not a unicast address",
            id="unspecified",
        ),
        pytest.param(
            "239.1.2.3", 30030, "mediation address 239.1.2.3 is not a unicast address", id="mcast"
        ),
        pytest.param(
            "255.255.255.255",
            30030,
            "mediation address 255.255.255.255 is not a unicast address",
            id="broadcast",
        ),
        pytest.param(
            3325256714,
            30030,
            "mediation address must be an IP address, got 3325256714",
            id="integer",
        ),
        pytest.param("198.51.100.10", 0, "mediation port must be in 1..65535, got 0", id="port 0"),
        pytest.param(
            "198.51.100.10", 65536, "mediation port must be in 1..65535, got 65536", id="port 65536"
        ),
        pytest.param(
            "198.51.100.10",
            "30030",
            "mediation port must be an integer, got '30030'",
            id="port as text",
        ),
    ],
)
def test_bad_mediation_address_or_port_is_rejected(address: Any, port: Any, message: str) -> None:
    assert (
        error_of(
            lambda: radius_mirroring_attributes(LiAction.START, MedDevHandle(1), address, port)
        )
        == message
    )


def test_an_unknown_li_action_is_rejected() -> None:
    assert error_of(
        lambda: radius_mirroring_attributes(3, MedDevHandle(1), "192.0.2.7", 5000)  # type: ignore[arg-type]
    ) == ("LI action must be 0 (stop), 1 (start) or 2 (no-op), got 3")


# DTCP


def add_message(**changes: Any) -> DtcpMessage:
    arguments: dict[str, Any] = {
        "csource_id": "dtcp1",
        "cdest_id": "cd1",
        "mediation_address": "198.51.100.10",
        "mediation_port": 30030,
        "source_address": "192.0.2.1",
        "intercept_id": 0x8000,
        "trigger": DtcpTrigger.USER_NAME,
        "trigger_value": "alice@isp.example",
        "seq": 7,
    }
    arguments.update(changes)
    return dtcp_add(**arguments)


def test_add_message_is_the_documented_headers_with_crlf_and_a_blank_line() -> None:
    assert add_message(source_port=50000).text() == (
        "ADD DTCP/0.7\r\n"
        "Csource-ID: dtcp1\r\n"
        "Cdest-ID: cd1\r\n"
        "X-JTap-Cdest-Dest-Address: 198.51.100.10\r\n"
        "X-JTap-Cdest-Dest-Port: 30030\r\n"
        "X-JTap-Cdest-Source-Address: 192.0.2.1\r\n"
        "X-JTap-Cdest-Source-Port: 50000\r\n"
        "X-MD-Intercept-Id: 0x00008000\r\n"
        "X-UserName: alice@isp.example\r\n"
        "Flags: STATIC\r\n"
        "Seq: 7\r\n"
        "Authentication-Info: <to be computed by the DTCP client>\r\n"
        "\r\n"
    )


def test_add_message_leaves_out_the_source_port_unless_given() -> None:
    message = add_message()

    assert message.method == "ADD"
    assert [name for name, _ in message.headers] == [
        "Csource-ID",
        "Cdest-ID",
        "X-JTap-Cdest-Dest-Address",
        "X-JTap-Cdest-Dest-Port",
        "X-JTap-Cdest-Source-Address",
        "X-MD-Intercept-Id",
        "X-UserName",
        "Flags",
        "Seq",
        "Authentication-Info",
    ]


def test_the_authentication_digest_is_a_marked_placeholder_never_a_made_up_value() -> None:
    messages = [
        add_message(),
        dtcp_delete_by_criteria_id(csource_id="dtcp1", criteria_id=2, seq=10),
        dtcp_delete_by_cdest_id(csource_id="dtcp1", cdest_id="cd1", seq=11),
        dtcp_list(csource_id="dtcp1", cdest_id="cd1", seq=12),
    ]

    for message in messages:
        assert message.headers[-1] == ("Authentication-Info", AUTHENTICATION_INFO_PLACEHOLDER)
        assert message.text().endswith(
            "Authentication-Info: <to be computed by the DTCP client>\r\n\r\n"
        )


@pytest.mark.parametrize(
    ("trigger", "value", "line"),
    [
        (DtcpTrigger.ACCT_SESSION_ID, "1234567", "X-Act-Sess-Id: 1234567"),
        (DtcpTrigger.CALLING_STATION_ID, "00:11:22:33:44:55", "X-Call-Sta-Id: 00:11:22:33:44:55"),
        (DtcpTrigger.INTERFACE_ID, "demux0.30010002", "X-Interface-Id: demux0.30010002"),
        (DtcpTrigger.IP_ADDRESS, "203.0.113.45", "X-IP-Addr: 203.0.113.45"),
        (DtcpTrigger.NAS_PORT_ID, "ge-1/0/0.100:100-200", "X-NAS-Port-Id: ge-1/0/0.100:100-200"),
        (DtcpTrigger.USER_NAME, "bob", "X-UserName: bob"),
        ("X-UserName", "bob", "X-UserName: bob"),
        (DtcpTrigger.NAS_PORT_ID, "slot 1 port 2", "X-NAS-Port-Id: slot 1 port 2"),
    ],
)
def test_each_trigger_kind_follows_the_intercept_id(
    trigger: DtcpTrigger, value: str, line: str
) -> None:
    lines = add_message(trigger=trigger, trigger_value=value).text().split("\r\n")

    assert lines[6:8] == ["X-MD-Intercept-Id: 0x00008000", line]


def test_intercept_id_is_written_as_its_4_byte_hex_form() -> None:
    assert ("X-MD-Intercept-Id", "0x3fffffff") in add_message(intercept_id=MIRROR_ID_MAX).headers
    assert ("X-MD-Intercept-Id", "0x00000000") in add_message(intercept_id=0).headers


def test_delete_by_criteria_id_names_only_the_criteria() -> None:
    message = dtcp_delete_by_criteria_id(csource_id="dtcp1", criteria_id=2, seq=10)

    assert message.text() == (
        "DELETE DTCP/0.7\r\n"
        "Csource-ID: dtcp1\r\n"
        "CRITERIA-ID: 2\r\n"
        "Flags: STATIC\r\n"
        "Seq: 10\r\n"
        "Authentication-Info: <to be computed by the DTCP client>\r\n"
        "\r\n"
    )


def test_delete_by_cdest_id_removes_everything_for_one_mediation_host() -> None:
    message = dtcp_delete_by_cdest_id(csource_id="dtcp1", cdest_id="cd1", seq=11)

    assert message.text() == (
        "DELETE DTCP/0.7\r\n"
        "Csource-ID: dtcp1\r\n"
        "Cdest-ID: cd1\r\n"
        "Flags: STATIC\r\n"
        "Seq: 11\r\n"
        "Authentication-Info: <to be computed by the DTCP client>\r\n"
        "\r\n"
    )


def test_list_asks_for_both_flags() -> None:
    message = dtcp_list(csource_id="dtcp1", cdest_id="cd1", seq=12)

    assert message.text() == (
        "LIST DTCP/0.7\r\n"
        "Csource-ID: dtcp1\r\n"
        "Cdest-ID: cd1\r\n"
        "Flags: BOTH\r\n"
        "Seq: 12\r\n"
        "Authentication-Info: <to be computed by the DTCP client>\r\n"
        "\r\n"
    )


def test_another_dtcp_version_can_be_asked_for() -> None:
    assert add_message(version="0.8").text().startswith("ADD DTCP/0.8\r\n")
    assert dtcp_list(csource_id="a", cdest_id="b", seq=1, version="0.8").version == "0.8"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"cdest_id": "cd1\r\nX-JTap-Cdest-Dest-Address: 203.0.113.66"},
            "Cdest-ID 'cd1\\r\\nX-JTap-Cdest-Dest-Address: 203.0.113.66' contains CR or LF, "
            "which would start a new DTCP header",
            id="CRLF in Cdest-ID",
        ),
        pytest.param(
            {"csource_id": "dtcp1\nSeq: 1"},
            "Csource-ID 'dtcp1\\nSeq: 1' contains CR or LF, which would start a new DTCP header",
            id="LF in Csource-ID",
        ),
        pytest.param(
            {"trigger_value": "alice\rX-UserName: bob"},
            "X-UserName 'alice\\rX-UserName: bob' contains CR or LF, "
            "which would start a new DTCP header",
            id="CR in trigger value",
        ),
        pytest.param({"csource_id": ""}, "Csource-ID must not be empty", id="empty Csource-ID"),
        pytest.param({"trigger_value": ""}, "X-UserName must not be empty", id="empty trigger"),
        pytest.param(
            {"cdest_id": "cd 1"}, "Cdest-ID 'cd 1' must not contain spaces", id="space in id"
        ),
        pytest.param(
            {"trigger_value": " alice"},
            "X-UserName ' alice' must not start or end with a space",
            id="leading space",
        ),
        pytest.param(
            {"trigger_value": "alice\t"},
            "X-UserName 'alice\\t' contains '\\t': only printable ASCII is allowed",
            id="tab",
        ),
        pytest.param(
            {"trigger_value": "al\x00ice"},
            "X-UserName 'al\\x00ice' contains '\\x00': only printable ASCII is allowed",
            id="NUL",
        ),
        pytest.param(
            {"trigger_value": "alïce"},
            "X-UserName 'alïce' contains 'ï': only printable ASCII is allowed",
            id="non-ASCII",
        ),
        pytest.param(
            {"trigger_value": 5}, "X-UserName must be text, got 5", id="trigger value not text"
        ),
        pytest.param(
            {"trigger": "X-Foo"},
            "DTCP trigger 'X-Foo' is not one of X-Act-Sess-Id, X-Call-Sta-Id, X-Interface-Id, "
            "X-IP-Addr, X-NAS-Port-Id, X-UserName",
            id="unknown trigger",
        ),
        pytest.param(
            {"trigger": DtcpTrigger.IP_ADDRESS, "trigger_value": "2001:db8::45"},
            "X-IP-Addr 2001:db8::45 is IPv6: Juniper documents the X-IP-Addr trigger as an "
            "IPv4 address",
            id="IPv6 subscriber address",
        ),
        pytest.param(
            {"trigger": DtcpTrigger.IP_ADDRESS, "trigger_value": "203.0.113"},
            "X-IP-Addr '203.0.113' is not an IP address",
            id="bad subscriber address",
        ),
        pytest.param(
            {"intercept_id": MIRROR_ID_MAX + 1},
            "X-MD-Intercept-Id must be in 0..1073741823 (30 bits), got 1073741824",
            id="intercept id 31 bits",
        ),
        pytest.param(
            {"intercept_id": -1},
            "X-MD-Intercept-Id must be in 0..1073741823 (30 bits), got -1",
            id="intercept id negative",
        ),
        pytest.param(
            {"mediation_address": "2001:db8::10"},
            "X-JTap-Cdest-Dest-Address 2001:db8::10 is IPv6: Juniper documents it as an IPv4 "
            "address",
            id="IPv6 mediation address",
        ),
        pytest.param(
            {"mediation_address": "224.0.0.1"},
            "X-JTap-Cdest-Dest-Address 224.0.0.1 is not a unicast address",
            id="multicast mediation address",
        ),
        pytest.param(
            {"source_address": "router1"},
            "X-JTap-Cdest-Source-Address 'router1' is not an IP address",
            id="bad source address",
        ),
        pytest.param(
            {"mediation_port": 0},
            "X-JTap-Cdest-Dest-Port must be in 1..65535, got 0",
            id="port 0",
        ),
        pytest.param(
            {"source_port": 65536},
            "X-JTap-Cdest-Source-Port must be in 1..65535, got 65536",
            id="source port 65536",
        ),
        pytest.param({"seq": 0}, "Seq must be in 1..4294967295, got 0", id="seq 0"),
        pytest.param(
            {"seq": 2**32}, "Seq must be in 1..4294967295, got 4294967296", id="seq 33 bits"
        ),
        pytest.param(
            {"version": "0.7\r\nX-Evil: 1"},
            "DTCP version must look like 0.7, got '0.7\\r\\nX-Evil: 1'",
            id="CRLF in version",
        ),
        pytest.param(
            {"version": "DTCP/0.7"},
            "DTCP version must look like 0.7, got 'DTCP/0.7'",
            id="version with name",
        ),
    ],
)
def test_bad_add_parameters_are_rejected_with_the_reason(
    changes: dict[str, Any], message: str
) -> None:
    assert error_of(lambda: add_message(**changes)) == message


def test_bad_delete_and_list_parameters_are_rejected_with_the_reason() -> None:
    assert error_of(
        lambda: dtcp_delete_by_criteria_id(csource_id="dtcp1", criteria_id=-1, seq=1)
    ) == ("CRITERIA-ID must be in 0..4294967295, got -1")
    assert error_of(
        lambda: dtcp_delete_by_criteria_id(csource_id="dtcp1", criteria_id="2", seq=1)  # type: ignore[arg-type]
    ) == ("CRITERIA-ID must be an integer, got '2'")
    assert error_of(
        lambda: dtcp_delete_by_cdest_id(csource_id="dtcp1", cdest_id="cd1\r\n", seq=1)
    ) == ("Cdest-ID 'cd1\\r\\n' contains CR or LF, which would start a new DTCP header")
    assert error_of(lambda: dtcp_list(csource_id="dtcp 1", cdest_id="cd1", seq=1)) == (
        "Csource-ID 'dtcp 1' must not contain spaces"
    )
    assert error_of(lambda: dtcp_list(csource_id="dtcp1", cdest_id="cd1", seq=0)) == (
        "Seq must be in 1..4294967295, got 0"
    )


def test_a_hand_built_message_cannot_smuggle_a_header_line() -> None:
    assert error_of(lambda: DtcpMessage("LIST", "0.7", (("Cdest-ID", "cd1\r\nSeq: 1"),))) == (
        "DTCP message part 'cd1\\r\\nSeq: 1' contains CR or LF"
    )

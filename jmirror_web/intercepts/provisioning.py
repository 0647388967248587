"""What the router team needs to start or stop mirroring a subscriber: pure Python, no Django.

An LI administrator hands the router team one of two things, and this module builds both
from an intercept's mirror id and the mediation host's address and port:

- **RADIUS** (E Series and MX subscriber management): the four Juniper (ERX, vendor 4874)
  VSAs for an Access-Accept or CoA-Request, see :func:`radius_mirroring_attributes`. The
  mirror id and optional session id travel in ERX-Med-Dev-Handle, whose two forms
  :class:`MedDevHandle` encodes and decodes.
- **DTCP** (MX, text messages over SSH): ADD, DELETE and LIST messages, see
  :func:`dtcp_add`, :func:`dtcp_delete_by_criteria_id`, :func:`dtcp_delete_by_cdest_id`
  and :func:`dtcp_list`.

Every bad value raises :class:`ProvisioningError` (a ``ValueError``) naming the field
and the reason, so a form can show it as is. Nothing here talks to a router or a RADIUS
server, and nothing here holds a secret: RADIUS salt encryption and the DTCP
``Authentication-Info`` digest are done by the RADIUS server and the DTCP client.

Sources:

- Juniper, "RADIUS Attributes Used for Subscriber Secure Policy" (Junos subscriber
  management): VSAs 26-58 to 26-61, salt-encrypted; a CoA carrying one must carry all
  four; a stop must repeat the values in force.
- Juniper, JUNOSe Policy Management Configuration Guide, "Format of the Mirror Header
  Attributes": the 8-byte and 4-byte forms of VSA 26-59 and the example
  ``0000030000000090``.
- FreeRADIUS ``share/dictionary.erx``: attribute names, ERX-Med-Dev-Handle ``octets``,
  ERX-Med-Ip-Address ``ipaddr`` (IPv4), ERX-LI-Action values off/on/noop = 0/1/2.
- Juniper, Junos "ADD (DTCP)", "DELETE (DTCP)", "LIST (DTCP)", "DTCP Traffic Mirroring
  Triggers", "Example: Using DTCP Messages to Trigger, Verify, and Disable Traffic
  Mirroring for Subscribers" and "Packet Header for Mirrored Traffic Sent to Mediation
  Device".
"""

from __future__ import annotations

import ipaddress
import re
import string
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Final, TypeAlias

JUNIPER_VENDOR_ID: Final = 4874
MIRROR_ID_MAX: Final = 0x3FFFFFFF
SESSION_ID_MAX: Final = 0xFFFFFFFF

_FORM_8_BYTE: Final = 0b00
_FORM_4_BYTE: Final = 0b01
_WORD: Final = struct.Struct(">I")
_TWO_WORDS: Final = struct.Struct(">II")
_LIMITED_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")

Address: TypeAlias = str | ipaddress.IPv4Address | ipaddress.IPv6Address


class ProvisioningError(ValueError):
    """A value that cannot go into a RADIUS attribute or a DTCP message; says which and why."""


def _check_int(what: str, value: object, low: int, high: int, unit: str = "") -> int:
    # bool is an int subclass; True as a port or an id is always a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProvisioningError(f"{what} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ProvisioningError(f"{what} must be in {low}..{high}{unit}, got {value}")
    return value


def _unicast_ipv4(what: str, value: object, why_ipv4: str) -> ipaddress.IPv4Address:
    # ipaddress.ip_address also takes integers; an address typed as a number is a mistake.
    if not isinstance(value, str | ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise ProvisioningError(f"{what} must be an IP address, got {value!r}")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ProvisioningError(f"{what} {value!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address):
        raise ProvisioningError(f"{what} {address} is IPv6: {why_ipv4}")
    if address.is_unspecified or address.is_multicast or address == _LIMITED_BROADCAST:
        raise ProvisioningError(f"{what} {address} is not a unicast address")
    return address


@dataclass(frozen=True, slots=True)
class MedDevHandle:
    """The value of VSA 26-59 ERX-Med-Dev-Handle: a mirror id and, optionally, a session id.

    With a ``sid`` it is the 8-byte form: top two bits 00, the 30-bit mirror id in the
    rest of word 0, the session id in word 1. Without one (``sid=None``) it is the 4-byte
    form: top two bits 01 and the mirror id, and the router takes the session id from the
    low 32 bits of the subscriber's Acct-Session-Id. The mirror id is the intercept id
    the router writes into every jmirror header.
    """

    mirror_id: int
    sid: int | None = None

    def __post_init__(self) -> None:
        _check_int("mirror id", self.mirror_id, 0, MIRROR_ID_MAX, " (30 bits)")
        if self.sid is not None:
            _check_int("session id", self.sid, 0, SESSION_ID_MAX, " (32 bits)")

    @property
    def sid_from_acct_session_id(self) -> bool:
        """True for the 4-byte form: the router derives the session id itself."""
        return self.sid is None

    def to_bytes(self) -> bytes:
        """The attribute's cleartext octets, 4 or 8 of them."""
        if self.sid is None:
            return _WORD.pack(_FORM_4_BYTE << 30 | self.mirror_id)
        return _TWO_WORDS.pack(self.mirror_id, self.sid)

    def to_hex(self) -> str:
        """Lower-case hex without a prefix, as Juniper writes it: ``0000030000000090``."""
        return self.to_bytes().hex()

    def describe(self) -> str:
        """One line for people, e.g. ``mirror id 0x300, session id 0x90``."""
        if self.sid is None:
            return (
                f"mirror id {self.mirror_id:#x}, session id from the low 32 bits of Acct-Session-Id"
            )
        return f"mirror id {self.mirror_id:#x}, session id {self.sid:#x}"

    @classmethod
    def from_bytes(cls, value: bytes) -> MedDevHandle:
        """Decode the attribute's cleartext octets; the top two bits pick the form."""
        if len(value) not in (4, 8):
            raise ProvisioningError(
                f"ERX-Med-Dev-Handle must be 4 or 8 bytes long, got {len(value)}"
            )
        (word0,) = _WORD.unpack_from(value)
        form = word0 >> 30
        mirror_id = word0 & MIRROR_ID_MAX
        if form == _FORM_8_BYTE:
            if len(value) != 8:
                raise ProvisioningError(
                    "ERX-Med-Dev-Handle starts with bits 00 (the 8-byte form) but is 4 bytes long"
                )
            (sid,) = _WORD.unpack_from(value, 4)
            return cls(mirror_id, sid)
        if form == _FORM_4_BYTE:
            if len(value) != 4:
                raise ProvisioningError(
                    "ERX-Med-Dev-Handle starts with bits 01 (the 4-byte form) but is 8 bytes long"
                )
            return cls(mirror_id, None)
        raise ProvisioningError(
            f"ERX-Med-Dev-Handle starts with bits {form:02b}: "
            "only 00 (8-byte form) and 01 (4-byte form) exist"
        )

    @classmethod
    def from_hex(cls, text: str) -> MedDevHandle:
        """Decode hex as an operator might paste it.

        Accepts upper or lower case, surrounding whitespace, an optional ``0x`` prefix,
        and spaces or colons between digits (how Wireshark and router CLIs print bytes).
        Anything else is an error rather than a guess.
        """
        digits = text.strip()
        if digits[:2].lower() == "0x":
            digits = digits[2:]
        digits = digits.replace(" ", "").replace(":", "")
        if not digits:
            raise ProvisioningError("ERX-Med-Dev-Handle is empty")
        not_hex = next((char for char in digits if char not in string.hexdigits), None)
        if not_hex is not None:
            raise ProvisioningError(
                f"ERX-Med-Dev-Handle {text!r} contains {not_hex!r}, which is not a hex digit"
            )
        if len(digits) % 2:
            raise ProvisioningError(
                f"ERX-Med-Dev-Handle {text!r} has an odd number of hex digits ({len(digits)})"
            )
        return cls.from_bytes(bytes.fromhex(digits))


class LiAction(IntEnum):
    """ERX-LI-Action (26-58) values; FreeRADIUS's dictionary.erx names them off, on, noop."""

    STOP = 0
    START = 1
    NO_OP = 2


class ErxAttribute(IntEnum):
    """Vendor types of the mirroring VSAs under vendor 4874."""

    LI_ACTION = 58
    MED_DEV_HANDLE = 59
    MED_IP_ADDRESS = 60
    MED_PORT_NUMBER = 61


# The names FreeRADIUS's dictionary.erx gives them; Juniper's tables drop the ERX- prefix.
ERX_ATTRIBUTE_NAMES: Final[dict[ErxAttribute, str]] = {
    ErxAttribute.LI_ACTION: "ERX-LI-Action",
    ErxAttribute.MED_DEV_HANDLE: "ERX-Med-Dev-Handle",
    ErxAttribute.MED_IP_ADDRESS: "ERX-Med-Ip-Address",
    ErxAttribute.MED_PORT_NUMBER: "ERX-Med-Port-Number",
}


@dataclass(frozen=True, slots=True)
class RadiusAttribute:
    """One vendor-specific attribute: its vendor type, dictionary name and value as text."""

    vendor_type: ErxAttribute
    name: str
    value: str

    @property
    def number(self) -> str:
        """Juniper's way of writing it: ``26-59`` (Vendor-Specific, vendor type 59)."""
        return f"26-{int(self.vendor_type)}"

    def freeradius_line(self) -> str:
        """``name = value`` as in a FreeRADIUS users file or radclient input."""
        return f"{self.name} = {self.value}"


def radius_mirroring_attributes(
    action: LiAction,
    handle: MedDevHandle,
    mediation_address: Address,
    mediation_port: int,
) -> tuple[RadiusAttribute, RadiusAttribute, RadiusAttribute, RadiusAttribute]:
    """The four VSAs that start, stop or leave alone mirroring of one subscriber.

    They go into an Access-Accept (mirroring starts at login) or a CoA-Request (the
    subscriber is already logged in, identified by User-Name or Acct-Session-Id). The
    handle's form follows its ``sid``: 8 bytes when a session id is pinned, 4 when the
    router is to take it from Acct-Session-Id.

    Juniper rejects a CoA that carries one of these attributes without the other three,
    so STOP and NO-OP carry all four too; a STOP must repeat the handle, address and
    port of the mirroring in force or the router refuses it.

    The values are cleartext: the RADIUS server salt-encrypts all four on the wire
    (``encrypt=2`` in FreeRADIUS's dictionary), which is not done here.
    """
    try:
        action = LiAction(action)
    except ValueError:
        raise ProvisioningError(
            f"LI action must be 0 (stop), 1 (start) or 2 (no-op), got {action!r}"
        ) from None
    address = _unicast_ipv4(
        "mediation address",
        mediation_address,
        "ERX-Med-Ip-Address carries an IPv4 address only",
    )
    port = _check_int("mediation port", mediation_port, 1, 65535)
    return (
        _erx_attribute(ErxAttribute.LI_ACTION, str(int(action))),
        # FreeRADIUS writes an octets value as 0x-prefixed hex.
        _erx_attribute(ErxAttribute.MED_DEV_HANDLE, f"0x{handle.to_hex()}"),
        _erx_attribute(ErxAttribute.MED_IP_ADDRESS, str(address)),
        _erx_attribute(ErxAttribute.MED_PORT_NUMBER, str(port)),
    )


def _erx_attribute(vendor_type: ErxAttribute, value: str) -> RadiusAttribute:
    return RadiusAttribute(vendor_type, ERX_ATTRIBUTE_NAMES[vendor_type], value)


def freeradius_text(attributes: Iterable[RadiusAttribute]) -> str:
    """The attributes as FreeRADIUS-style lines, one per attribute, each ending in a newline."""
    return "".join(f"{attribute.freeradius_line()}\n" for attribute in attributes)


# Every DTCP syntax and sample Juniper publishes (Junos 13.1 to current) says DTCP/0.7.
DTCP_VERSION: Final = "0.7"
AUTHENTICATION_INFO_PLACEHOLDER: Final = "<to be computed by the DTCP client>"
# STATIC is the only flag ADD and DELETE support, BOTH the only one LIST supports
# (Juniper, "ADD (DTCP)", "DELETE (DTCP)", "LIST (DTCP)").
_ADD_DELETE_FLAGS: Final = "STATIC"
_LIST_FLAGS: Final = "BOTH"
# Juniper gives no upper bound for Seq or CRITERIA-ID; 32 bits is our own conservative limit.
SEQ_MAX: Final = 0xFFFFFFFF
CRITERIA_ID_MAX: Final = 0xFFFFFFFF
_VERSION_PATTERN: Final = re.compile(r"\d+\.\d+")


class DtcpTrigger(StrEnum):
    """The DTCP header that picks which subscriber to mirror, one per ADD message.

    From Juniper's "DTCP Traffic Mirroring Triggers" table; X-UserName is the
    "Subscriber User Name" trigger Juniper lists, with Account Session ID and Interface
    Identifier, as optimized for a scaled subscriber management environment. Juniper's
    remote circuit and remote agent id triggers only work as a pair and are left out.
    """

    ACCT_SESSION_ID = "X-Act-Sess-Id"
    CALLING_STATION_ID = "X-Call-Sta-Id"
    INTERFACE_ID = "X-Interface-Id"
    IP_ADDRESS = "X-IP-Addr"
    NAS_PORT_ID = "X-NAS-Port-Id"
    USER_NAME = "X-UserName"


@dataclass(frozen=True, slots=True)
class DtcpMessage:
    """One DTCP request: the method line and its headers, in order.

    :meth:`text` is what goes over the SSH channel. Build one with :func:`dtcp_add`,
    :func:`dtcp_delete_by_criteria_id`, :func:`dtcp_delete_by_cdest_id` or
    :func:`dtcp_list`, which validate every value.
    """

    method: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        # The builders already check each field; this guards a hand-built message, since
        # a CR or LF anywhere would let a value add its own header line.
        for part in (self.method, self.version, *(item for pair in self.headers for item in pair)):
            if "\r" in part or "\n" in part:
                raise ProvisioningError(f"DTCP message part {part!r} contains CR or LF")

    def text(self) -> str:
        """The message with CRLF line ends and the blank line that ends it, HTTP-style."""
        lines = [f"{self.method} DTCP/{self.version}"]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        return "".join(f"{line}\r\n" for line in lines) + "\r\n"


def _header_value(header: str, value: object, *, spaces_allowed: bool) -> str:
    if not isinstance(value, str):
        raise ProvisioningError(f"{header} must be text, got {value!r}")
    if "\r" in value or "\n" in value:
        raise ProvisioningError(
            f"{header} {value!r} contains CR or LF, which would start a new DTCP header"
        )
    if not value:
        raise ProvisioningError(f"{header} must not be empty")
    # DTCP is a text protocol with no declared charset: printable ASCII is all that is
    # certain to reach the router unchanged.
    unprintable = next((char for char in value if not " " <= char <= "~"), None)
    if unprintable is not None:
        raise ProvisioningError(
            f"{header} {value!r} contains {unprintable!r}: only printable ASCII is allowed"
        )
    if value != value.strip():
        raise ProvisioningError(f"{header} {value!r} must not start or end with a space")
    if not spaces_allowed and " " in value:
        raise ProvisioningError(f"{header} {value!r} must not contain spaces")
    return value


def _identifier(header: str, value: object) -> str:
    return _header_value(header, value, spaces_allowed=False)


def _version(version: object) -> str:
    if not isinstance(version, str) or not _VERSION_PATTERN.fullmatch(version):
        raise ProvisioningError(f"DTCP version must look like 0.7, got {version!r}")
    return version


def _closing_headers(seq: int) -> list[tuple[str, str]]:
    return [
        ("Seq", str(_check_int("Seq", seq, 1, SEQ_MAX))),
        ("Authentication-Info", AUTHENTICATION_INFO_PLACEHOLDER),
    ]


def dtcp_add(
    *,
    csource_id: str,
    cdest_id: str,
    mediation_address: Address,
    mediation_port: int,
    source_address: Address,
    intercept_id: int,
    trigger: DtcpTrigger,
    trigger_value: str,
    seq: int,
    source_port: int | None = None,
    version: str = DTCP_VERSION,
) -> DtcpMessage:
    """An ADD message that makes an MX mirror one subscriber to the mediation host.

    ``csource_id`` is the DTCP user configured on the router, ``cdest_id`` the name this
    mediation host goes by in DTCP (DELETE and LIST use it too). ``mediation_address``
    and ``mediation_port`` become the destination of the mirrored UDP packets,
    ``source_address`` their source, which must match the router's ``services
    radius-flow-tap source-ipv4-address``. ``intercept_id`` becomes the 30-bit intercept
    id of every jmirror header; the router picks a new session id at each login.
    ``trigger`` and ``trigger_value`` name the subscriber. ``seq`` must grow with every
    message sent on the connection.

    ``Authentication-Info`` is left as :data:`AUTHENTICATION_INFO_PLACEHOLDER`: the
    digest is keyed with a secret shared with the router and covers the exact message
    sent, so the operator's DTCP client computes it just before sending. This module
    never makes one up.
    """
    headers = [
        ("Csource-ID", _identifier("Csource-ID", csource_id)),
        ("Cdest-ID", _identifier("Cdest-ID", cdest_id)),
        (
            "X-JTap-Cdest-Dest-Address",
            str(
                _unicast_ipv4(
                    "X-JTap-Cdest-Dest-Address",
                    mediation_address,
                    "Juniper documents it as an IPv4 address",
                )
            ),
        ),
        (
            "X-JTap-Cdest-Dest-Port",
            str(_check_int("X-JTap-Cdest-Dest-Port", mediation_port, 1, 65535)),
        ),
        (
            "X-JTap-Cdest-Source-Address",
            str(
                _unicast_ipv4(
                    "X-JTap-Cdest-Source-Address",
                    source_address,
                    "Juniper documents it as an IPv4 address",
                )
            ),
        ),
    ]
    if source_port is not None:
        headers.append(
            (
                "X-JTap-Cdest-Source-Port",
                str(_check_int("X-JTap-Cdest-Source-Port", source_port, 1, 65535)),
            )
        )
    # Juniper's only written example of the value is 0x-prefixed hex
    # ("X-MD-Intercept-Id: 0x0101010130010002"); this is its 4-byte form.
    intercept = _check_int("X-MD-Intercept-Id", intercept_id, 0, MIRROR_ID_MAX, " (30 bits)")
    headers.append(("X-MD-Intercept-Id", f"0x{intercept:08x}"))
    headers.append(_trigger_header(trigger, trigger_value))
    headers.append(("Flags", _ADD_DELETE_FLAGS))
    headers.extend(_closing_headers(seq))
    return DtcpMessage("ADD", _version(version), tuple(headers))


def _trigger_header(trigger: DtcpTrigger | str, value: object) -> tuple[str, str]:
    try:
        kind = DtcpTrigger(trigger)
    except ValueError:
        known = ", ".join(member.value for member in DtcpTrigger)
        raise ProvisioningError(f"DTCP trigger {trigger!r} is not one of {known}") from None
    if kind is DtcpTrigger.IP_ADDRESS:
        address = _unicast_ipv4(
            kind.value, value, "Juniper documents the X-IP-Addr trigger as an IPv4 address"
        )
        return kind.value, str(address)
    # Calling-Station-Id and NAS-Port-Id are free text in RADIUS and may hold spaces.
    return kind.value, _header_value(kind.value, value, spaces_allowed=True)


def dtcp_delete_by_criteria_id(
    *, csource_id: str, criteria_id: int, seq: int, version: str = DTCP_VERSION
) -> DtcpMessage:
    """A DELETE message that removes one trigger, by the CRITERIA-ID the router gave its ADD.

    The router returns the id in its reply to ADD, and LIST shows it again. Juniper
    forbids CRITERIA-ID and Cdest-ID in the same DELETE, hence two functions.
    ``Authentication-Info`` is a placeholder, as in :func:`dtcp_add`.
    """
    headers = [
        ("Csource-ID", _identifier("Csource-ID", csource_id)),
        ("CRITERIA-ID", str(_check_int("CRITERIA-ID", criteria_id, 0, CRITERIA_ID_MAX))),
        ("Flags", _ADD_DELETE_FLAGS),
        *_closing_headers(seq),
    ]
    return DtcpMessage("DELETE", _version(version), tuple(headers))


def dtcp_delete_by_cdest_id(
    *, csource_id: str, cdest_id: str, seq: int, version: str = DTCP_VERSION
) -> DtcpMessage:
    """A DELETE message that removes every trigger sending to one mediation host (Cdest-ID).

    ``Authentication-Info`` is a placeholder, as in :func:`dtcp_add`.
    """
    headers = [
        ("Csource-ID", _identifier("Csource-ID", csource_id)),
        ("Cdest-ID", _identifier("Cdest-ID", cdest_id)),
        ("Flags", _ADD_DELETE_FLAGS),
        *_closing_headers(seq),
    ]
    return DtcpMessage("DELETE", _version(version), tuple(headers))


def dtcp_list(
    *, csource_id: str, cdest_id: str, seq: int, version: str = DTCP_VERSION
) -> DtcpMessage:
    """A LIST message: the triggers (not the mirrored sessions) the router holds for Cdest-ID.

    ``Flags: BOTH`` is sent because releases before 14.1R5 and 14.2R3 reject a LIST
    without it. ``Authentication-Info`` is a placeholder, as in :func:`dtcp_add`.
    """
    headers = [
        ("Csource-ID", _identifier("Csource-ID", csource_id)),
        ("Cdest-ID", _identifier("Cdest-ID", cdest_id)),
        ("Flags", _LIST_FLAGS),
        *_closing_headers(seq),
    ]
    return DtcpMessage("LIST", _version(version), tuple(headers))

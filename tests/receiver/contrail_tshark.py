"""What tshark shows of Contrail (CN2 vRouter "Juniper header") frames, in the decode
command's record terms, for the conformance tests.

tshark dissects the header only on ports it is told (``-d udp.port==P,juniper``). Its
"Juniper Virtual Network Information" dissector (4.0) stops at a TLV type it does not
know ("Incorrect format") and then shows no inner frame; it names seven of the ten
action bits. Where it is blind the generator's record is the reference.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from receiver import traffic

TSHARK_CONTRAIL_FIELDS = [
    *("frame.number", "frame.protocols", "ip.src", "ip.dst", "ip.proto", "ip.flags.mf"),
    *("ip.frag_offset", "ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.hopopts.nxt"),
    *("ipv6.routing.nxt", "ipv6.dstopts.nxt", "ipv6.fraghdr.nxt", "udp.srcport"),
    *("udp.dstport", "udp.length", "tcp.srcport", "tcp.dstport", "juniper.vn.host_ip"),
    *("juniper.vn.flags", "juniper.vn.flags.direction", "juniper.vn.src", "juniper.vn.dst"),
    *("ieee8021ad.id", "vlan.id"),
]
TSHARK_ACTIONS = ("alert", "drop", "deny", "log", "pass", "reject", "mirror")
"""The action bits tshark 4.0 names (``juniper.vn.flags.<action>``)."""
IPV6_EXTENSION_HEADERS = ("ipv6.hopopts", "ipv6.routing", "ipv6.dstopts", "ipv6.fraghdr")


def tshark_fields(
    tshark: str, capture: Path, ports: Sequence[int], fields: Sequence[str]
) -> list[dict[str, list[str]]]:
    """Every frame's ``fields`` (each a list of its occurrences) as tshark dissects the
    capture with the Juniper header on ``ports``."""
    command = [tshark, "-r", str(capture), "-T", "fields", "-E", "occurrence=a"]
    for port in ports:
        command += ["-d", f"udp.port=={port},juniper"]
    for name in fields:
        command += ["-e", name]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    frames = []
    for line in lines.splitlines():
        values = dict(zip(fields, line.split("\t"), strict=True))
        # VN names have no commas in the generated traffic, so the split is safe.
        frames.append({name: value.split(",") if value else [] for name, value in values.items()})
    return frames


def contrail_tshark_view(
    tshark: str, capture: Path, ports: Sequence[int], *, with_vlans: bool = False
) -> dict[int, dict[str, object]]:
    """What tshark shows of each frame it dissects as the Juniper header, by frame
    number, in the decode command's terms: only the keys tshark has a value for (and
    ``vlans``, outermost first, when asked: the records do not carry them)."""
    view = {}
    for fields in tshark_fields(tshark, capture, ports, TSHARK_CONTRAIL_FIELDS):
        record = _as_contrail_record(fields, with_vlans=with_vlans)
        if record is not None:
            view[int(fields["frame.number"][0])] = record
    return view


def _boolean(value: str) -> bool:
    return value not in ("0", "False")


def _as_contrail_record(
    fields: Mapping[str, list[str]], *, with_vlans: bool
) -> dict[str, object] | None:
    protocols = fields["frame.protocols"][0].split(":")
    if "juniper" not in protocols:
        return None
    outer = protocols[: protocols.index("juniper")]
    outer_ipv4 = "ip" in outer
    record: dict[str, object] = {
        "frame": int(fields["frame.number"][0]),
        "router": fields["ip.src" if outer_ipv4 else "ipv6.src"][0],
        "port": int(fields["udp.dstport"][0]),
        "format": "contrail",
    }
    header_length = 2  # FF 00
    if fields["juniper.vn.host_ip"]:
        record["capture_host"] = fields["juniper.vn.host_ip"][0]
        header_length += 6
    if fields["juniper.vn.flags"]:
        record["flags"] = int(fields["juniper.vn.flags"][0], 16)
        ingress = _boolean(fields["juniper.vn.flags.direction"][0])
        record["direction"] = "ingress" if ingress else "egress"
        header_length += 6
    for key, field in (("source_vn", "juniper.vn.src"), ("dest_vn", "juniper.vn.dst")):
        if fields[field]:
            record[key] = fields[field][0]
            header_length += 2 + len(fields[field][0].encode("ascii"))
    inner = protocols[protocols.index("juniper") + 1 :]
    if not inner or inner[0] != "eth":
        # tshark stopped inside the TLVs (an unknown type): the rest is the generator's.
        return record
    # tshark showed every TLV, so those it did not show are absent.
    record = {"capture_host": None, "flags": None, "direction": None} | record
    record = {"source_vn": None, "dest_vn": None} | record
    record["length"] = int(fields["udp.length"][0]) - 8 - header_length
    if with_vlans:
        tags = [int(v) for v in fields["ieee8021ad.id"]] + [int(v) for v in fields["vlan.id"]]
        record["vlans"] = tags
    network = next((name for name in inner if name in ("ip", "ipv6", "arp")), None)
    if network == "ip":
        index = 1 if outer_ipv4 else 0
        record |= {"src": fields["ip.src"][index], "dst": fields["ip.dst"][index]}
        proto = int(fields["ip.proto"][index])
        fragment = _boolean(fields["ip.flags.mf"][index]) or fields["ip.frag_offset"][index] != "0"
    elif network == "ipv6":
        index = 0 if outer_ipv4 else 1
        record |= {"src": fields["ipv6.src"][index], "dst": fields["ipv6.dst"][index]}
        proto = _ipv6_transport(protocols, fields, index)
        fragment = "ipv6.fraghdr" in inner
    else:
        return record | dict.fromkeys(("src", "dst", "proto", "sport", "dport"))
    record["proto"] = proto
    # tshark reassembles inner fragments and shows the ports on the last one, where a
    # decoder (one frame at a time) has none: the ports of fragments are the generator's.
    if not fragment:
        record |= _transport_ports(proto, fields)
    return record


def _ipv6_transport(protocols: Sequence[str], fields: Mapping[str, list[str]], index: int) -> int:
    """The protocol after the inner IPv6 header's extension headers (the outer IPv6
    header, if any, has none)."""
    position = [n for n, name in enumerate(protocols) if name == "ipv6"][index] + 1
    proto = int(fields["ipv6.nxt"][index])
    while position < len(protocols) and protocols[position] in IPV6_EXTENSION_HEADERS:
        header = protocols[position]
        proto = int(fields[f"{header}.nxt"][protocols[:position].count(header)])
        position += 1
    return proto


def _transport_ports(proto: int, fields: Mapping[str, list[str]]) -> dict[str, object]:
    if proto == traffic.PROTO_TCP and fields["tcp.srcport"]:
        return {"sport": int(fields["tcp.srcport"][0]), "dport": int(fields["tcp.dstport"][0])}
    if proto == traffic.PROTO_UDP and len(fields["udp.srcport"]) > 1:
        # Occurrence 0 is the vRouter's outer UDP header.
        return {"sport": int(fields["udp.srcport"][1]), "dport": int(fields["udp.dstport"][1])}
    if proto in (traffic.PROTO_ICMP, traffic.PROTO_ICMPV6):
        return {"sport": None, "dport": None}
    return {}


def tshark_actions(tshark: str, capture: Path, ports: Sequence[int]) -> dict[int, list[str]]:
    """The actions tshark shows set, by frame, for the frames with a flags TLV (only
    the seven bits tshark names)."""
    fields = [
        "frame.number",
        "juniper.vn.flags",
        *(f"juniper.vn.flags.{a}" for a in TSHARK_ACTIONS),
    ]
    actions = {}
    for frame in tshark_fields(tshark, capture, ports, fields):
        if frame["juniper.vn.flags"]:
            actions[int(frame["frame.number"][0])] = [
                action
                for action in TSHARK_ACTIONS
                if _boolean(frame[f"juniper.vn.flags.{action}"][0])
            ]
    return actions

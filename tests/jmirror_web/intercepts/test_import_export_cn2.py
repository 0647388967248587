"""The records file's CN2 intercepts and vRouters: their keys, round trip, idempotence
and every way a bad one is refused without changing anything."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management.base import CommandError

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.models import Case, Intercept, Router
from jmirror_web.intercepts.records_file import export_records
from tests.factories import make_case, make_intercept, make_router
from tests.jmirror_web.intercepts.test_import_export import (
    DEC_1,
    MAR_1,
    _append,
    _delete,
    _set,
    database_state,
    run_export,
    run_import,
    write,
)

pytestmark = pytest.mark.django_db


def cn2_document() -> dict[str, Any]:
    return {
        "cases": [
            {
                "reference": "NZ-2026-007",
                "agency": "Police",
                "valid_from": "2026-12-01T00:00:00Z",
                "valid_until": "2027-03-01T00:00:00Z",
                "status": "active",
            }
        ],
        "routers": [
            {"name": "vr1", "address": "192.0.2.31", "kind": "cn2"},
            {"name": "vr2", "address": "2001:db8::31", "kind": "cn2", "port": 8100},
            {"name": "mx1", "address": "192.0.2.1", "kind": "mx", "port": 6502},
        ],
        "intercepts": [
            {
                "liid": "NZ-CN2-1",
                "case": "NZ-2026-007",
                "authcc": "NZ",
                "delivcc": "NZ",
                "kind": "cn2",
                "analyzer_port": 8099,
                "routers": ["vr1"],
            },
            {
                "liid": "NZ-CN2-2",
                "case": "NZ-2026-007",
                "authcc": "NZ",
                "delivcc": "NZ",
                "kind": "cn2",
                "analyzer_port": 8100,
                "virtual_networks": ["default-domain:k8s-default:pod-network"],
                "targets": ["10.1.2.3/32", "2001:db8:5::/48"],
                "starttime": DEC_1,
                "endtime": MAR_1,
            },
            {
                "liid": "NZ-JM-1",
                "case": "NZ-2026-007",
                "authcc": "NZ",
                "delivcc": "NZ",
                "kind": "jmirror",
                "vendmirrorid": 0x300,
                "routers": ["mx1"],
            },
        ],
    }


def test_a_cn2_file_creates_vrouters_and_cn2_intercepts(tmp_path):
    output = run_import(write(tmp_path, cn2_document()))

    assert "intercepts: 3 created" in output
    vr1, vr2 = Router.objects.get(name="vr1"), Router.objects.get(name="vr2")
    assert (vr1.format, vr1.port) == (Router.Format.CONTRAIL, 8099)  # Contrail's default
    assert (vr2.format, vr2.port) == (Router.Format.CONTRAIL, 8100)
    assert Router.objects.get(name="mx1").format == Router.Format.JMIRROR
    first, second, jmirror = Intercept.objects.order_by("liid")
    assert (first.kind, first.intercept_id, first.sid, first.analyzer_port) == (
        "cn2",
        None,
        None,
        8099,
    )
    assert [router.name for router in first.routers.all()] == ["vr1"]
    assert second.virtual_networks == ["default-domain:k8s-default:pod-network"]
    assert second.targets == ["10.1.2.3", "2001:db8:5::/48"]
    assert (jmirror.kind, jmirror.intercept_id) == ("jmirror", 0x300)


def test_the_export_writes_cn2_keys_and_leaves_jmirror_records_as_they_were(tmp_path):
    run_import(write(tmp_path, cn2_document()))

    exported = json.loads(run_export())

    by_liid = {record["liid"]: record for record in exported["intercepts"]}
    assert list(by_liid["NZ-CN2-2"]) == [
        "liid",
        "case",
        "agencyid",
        "authcc",
        "delivcc",
        "user",
        "kind",
        "analyzer_port",
        "virtual_networks",
        "targets",
        "starttime",
        "endtime",
        "routers",
        "keep_content",
    ]
    assert by_liid["NZ-CN2-2"]["targets"] == ["10.1.2.3", "2001:db8:5::/48"]
    assert by_liid["NZ-CN2-1"]["virtual_networks"] == []
    assert "kind" not in by_liid["NZ-JM-1"]
    assert by_liid["NZ-JM-1"]["vendmirrorid"] == 0x300
    assert {r["name"]: r["format"] for r in exported["routers"]}["vr1"] == "contrail"


def test_a_cn2_export_imported_into_an_empty_database_exports_the_same_json(tmp_path):
    vrouter = make_router(name="vr1", kind=Router.Kind.CN2, format=Router.Format.CONTRAIL)
    case = make_case(reference="NZ-1")
    make_intercept(
        case,
        liid="CN2-A",
        kind=Intercept.Kind.CN2,
        intercept_id=None,
        analyzer_port=None,
        virtual_networks=["red", "blue"],
        targets=["10.0.0.0/8"],
        routers=[vrouter],
    )
    make_intercept(case, liid="JM-A", intercept_id=0x300, sid=0x90)
    first = run_export()

    Intercept.objects.all().delete()
    Case.objects.all().delete()
    Router.objects.all().delete()
    run_import(write(tmp_path, first.encode()))

    assert run_export() == first
    assert json.loads(first)["intercepts"][0]["analyzer_port"] is None


def test_importing_a_cn2_file_twice_changes_nothing(tmp_path):
    path = write(tmp_path, cn2_document())
    run_import(path)
    before = database_state()

    output = run_import(path)

    assert database_state()[:2] == before[:2]
    assert "intercepts: 0 created, 0 updated, 3 unchanged" in output
    assert "routers: 0 created, 0 updated, 3 unchanged" in output


def test_a_claim_key_left_out_keeps_its_stored_value_and_a_kind_change_clears_the_other(
    tmp_path,
):
    run_import(write(tmp_path, cn2_document()))
    document = cn2_document()
    del document["intercepts"][1]["targets"]
    document["intercepts"][1]["analyzer_port"] = 8200
    # The jmirror intercept becomes a CN2 one, and loses its mirror id and MX router.
    document["intercepts"][2] = {
        key: value
        for key, value in document["intercepts"][2].items()
        if key not in ("vendmirrorid", "routers")
    } | {"kind": "cn2", "analyzer_port": 9000, "routers": []}

    run_import(write(tmp_path, document))

    second = Intercept.objects.get(liid="NZ-CN2-2")
    assert (second.analyzer_port, second.targets) == (8200, ["10.1.2.3", "2001:db8:5::/48"])
    changed = Intercept.objects.get(liid="NZ-JM-1")
    assert (changed.kind, changed.intercept_id, changed.analyzer_port) == ("cn2", None, 9000)
    assert list(changed.routers.all()) == []


def test_existing_router_records_stay_valid_and_a_kind_change_brings_its_format(tmp_path):
    run_import(write(tmp_path, {"routers": [{"name": "r1", "address": "192.0.2.9"}]}))
    router = Router.objects.get(name="r1")
    assert (router.kind, router.format, router.port) == ("mx", "jmirror", 30030)

    run_import(
        write(tmp_path, {"routers": [{"name": "r1", "address": "192.0.2.9", "kind": "cn2"}]})
    )

    router.refresh_from_db()
    assert (router.kind, router.format, router.port) == ("cn2", "contrail", 30030)


FIRST = "intercepts[0] (liid NZ-CN2-1)"
SECOND = "intercepts[1] (liid NZ-CN2-2)"
THIRD = "intercepts[2] (liid NZ-JM-1)"
VR1 = "routers[0] (name vr1)"

BAD_CN2_DOCUMENTS = [
    pytest.param(
        _set("intercepts.0.kind", "vxlan"),
        f"{FIRST}: kind: 'vxlan' is not a kind of intercept (jmirror or cn2)",
        id="unknown kind",
    ),
    pytest.param(_set("intercepts.0.kind", 2), f"{FIRST}: kind: not a string", id="kind number"),
    pytest.param(
        _set("intercepts.0.vendmirrorid", 0x300),
        f"{FIRST}: vendmirrorid: a CN2 intercept has no mirror id (it claims by "
        "analyzer_port, virtual_networks and targets)",
        id="cn2 with a mirror id",
    ),
    pytest.param(
        _set("intercepts.0.sid", None),
        f"{FIRST}: sid: a CN2 intercept has no session id",
        id="cn2 with a session id",
    ),
    pytest.param(
        _set("intercepts.0.analyzer_port", "8099"),
        f"{FIRST}: analyzer_port: not an integer",
        id="port as text",
    ),
    pytest.param(
        _set("intercepts.0.analyzer_port", 0),
        f"{FIRST}: analyzer_port: Ensure this value is greater than or equal to 1.",
        id="port 0",
    ),
    pytest.param(
        _set("intercepts.0.analyzer_port", 65536),
        f"{FIRST}: analyzer_port: Ensure this value is less than or equal to 65535.",
        id="port too large",
    ),
    pytest.param(
        _set("intercepts.1.virtual_networks", "red"),
        f"{SECOND}: virtual_networks: not a list of VN names",
        id="vns not a list",
    ),
    pytest.param(
        _set("intercepts.1.virtual_networks", ["v" * 256]),
        f"{SECOND}: virtual_networks: Virtual network '{'v' * 40}...' is 256 characters "
        "long; a VN name is 1 to 255.",
        id="vn too long",
    ),
    pytest.param(
        _set("intercepts.1.virtual_networks", ["red\u0000"]),
        f"{SECOND}: virtual_networks: Virtual network 'red\\x00': a VN name is printable "
        "ASCII only (no NUL, no control or non-ASCII character).",
        id="vn with NUL",
    ),
    pytest.param(
        _set("intercepts.1.targets", [10]),
        f"{SECOND}: targets: not a list of addresses or prefixes",
        id="target a number",
    ),
    pytest.param(
        _set("intercepts.1.targets", ["10.1.2.0/33"]),
        f"{SECOND}: targets: Target '10.1.2.0/33' is not an IPv4 or IPv6 address or prefix.",
        id="bad prefix length",
    ),
    pytest.param(
        _set("intercepts.1.targets", ["10.1.2.3/24"]),
        f"{SECOND}: targets: Target '10.1.2.3/24' has bits set beyond its prefix length: "
        "did you mean 10.1.2.0/24?",
        id="host bits",
    ),
    pytest.param(
        _set("intercepts.1.targets", [f"10.0.0.{n}" for n in range(65)]),
        f"{SECOND}: targets: At most 64 targets per intercept (65 given).",
        id="too many targets",
    ),
    pytest.param(
        _set("intercepts.0.analyzer_port", None),
        f"{FIRST}: A CN2 intercept claims by analyzer port, virtual networks or targets: "
        "give at least one.",
        id="no claim",
    ),
    pytest.param(
        _set("intercepts.0.routers", ["vr1", "mx1"]),
        f"{FIRST}: routers: mx1: not a CN2 vRouter; a CN2 intercept claims only the "
        "Contrail frames vRouters send.",
        id="cn2 naming an MX router",
    ),
    pytest.param(
        _set("intercepts.2.routers", ["vr1"]),
        f"{THIRD}: routers: vr1: a CN2 vRouter, which sends Contrail frames; only a CN2 "
        "intercept claims them.",
        id="jmirror naming a vRouter",
    ),
    pytest.param(
        _set("intercepts.2.targets", ["10.0.0.1"]),
        f'{THIRD}: targets: only a CN2 intercept ("kind": "cn2") has this key',
        id="jmirror with a cn2 key",
    ),
    pytest.param(
        _delete("intercepts.2.vendmirrorid"),
        f"{THIRD}: vendmirrorid: missing",
        id="jmirror without a mirror id",
    ),
    pytest.param(
        _set("intercepts.1.analyzer_port", 8099),
        f"{SECOND}: Intercept NZ-CN2-1 (case NZ-2026-007) already claims Contrail frames "
        "(analyzer port 8099) from an overlapping set of vRouters in an overlapping window, "
        "and this one would claim on analyzer port 8099; two intercepts must never claim "
        "the same frame. Virtual networks and targets do not keep two intercepts apart (a "
        "frame carries two VN names and two addresses, and one from a target of one to a "
        "target of the other would match both): give each mirror destination its own "
        "analyzer port.",
        id="overlapping cn2 intercepts",
    ),
    pytest.param(
        _set("routers.0.format", "jmirror"),
        f"{VR1}: format: A CN2 vRouter sends the Contrail Juniper header.",
        id="vrouter sending jmirror",
    ),
    pytest.param(
        _set("routers.2.format", "contrail"),
        "routers[2] (name mx1): format: E Series and MX routers send jmirror; only a CN2 "
        "vRouter sends the Contrail Juniper header.",
        id="mx sending contrail",
    ),
    pytest.param(
        _append("routers", {"name": "vr9", "address": "192.0.2.99", "kind": "cn2", "port": 0}),
        "routers[3] (name vr9): port: Ensure this value is greater than or equal to 1.",
        id="vrouter port 0",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD_CN2_DOCUMENTS)
def test_a_bad_cn2_record_is_refused_naming_it_and_nothing_is_imported(tmp_path, change, message):
    run_import(write(tmp_path, cn2_document(), "first.json"))
    document = cn2_document()
    document["cases"][0]["agency"] = "Changed"  # would be kept without the transaction
    change(document)
    path = write(tmp_path, document)
    before = database_state()

    with pytest.raises(CommandError) as refused:
        run_import(path)

    assert str(refused.value) == f"{path}: {message}"
    assert database_state()[:2] == before[:2]
    assert AuditEvent.objects.last().details["error"] == message
    assert export_records()["cases"][0]["agency"] == "Police"

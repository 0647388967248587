"""CN2 intercepts and routers: claims by analyzer port, virtual network and target, their
validation, the routers they may name, and the overlap rule between them."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from jmirror_web.intercepts.models import Case, Intercept, Router
from tests.factories import make_case, make_intercept, make_router

pytestmark = pytest.mark.django_db


def vrouter(**fields: object) -> Router:
    return make_router(kind=Router.Kind.CN2, format=Router.Format.CONTRAIL, port=8099, **fields)


def cn2_intercept(case: Case, **fields: object) -> Intercept:
    routers = fields.pop("routers", None)
    values: dict[str, object] = {
        "case": case,
        "liid": "CN2-0001",
        "kind": Intercept.Kind.CN2,
        "intercept_id": None,
        "analyzer_port": 8099,
        "valid_from": case.valid_from,
        "valid_until": case.valid_until,
    }
    values.update(fields)
    intercept = Intercept(**values)
    if routers is not None:
        intercept.pending_router_ids = frozenset(router.pk for router in routers)  # type: ignore[attr-defined]
    return intercept


def errors_of(intercept: Intercept) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as raised:
        intercept.full_clean()
    return raised.value.message_dict


def test_a_cn2_intercept_claims_by_port_vn_or_target_and_normalizes_its_lists():
    intercept = cn2_intercept(
        make_case(),
        analyzer_port=None,
        virtual_networks=["default-domain:k8s:pod-network", "vn red"],
        targets=["10.0.0.1/32", "2001:DB8::/32", "192.0.2.0/255.255.255.0", "2001:db8::1/128"],
    )
    intercept.full_clean()
    assert intercept.targets == ["10.0.0.1", "2001:db8::/32", "192.0.2.0/24", "2001:db8::1"]
    assert intercept.virtual_networks == ["default-domain:k8s:pod-network", "vn red"]
    intercept.save()
    assert Intercept.objects.get(pk=intercept.pk).targets == intercept.targets
    assert intercept.claims_text() == (
        "any port; VN default-domain:k8s:pod-network, vn red; "
        "target 10.0.0.1, 2001:db8::/32, 192.0.2.0/24, 2001:db8::1"
    )


def test_a_cn2_intercept_must_claim_by_something():
    intercept = cn2_intercept(make_case(), analyzer_port=None)
    assert errors_of(intercept) == {
        "__all__": [
            "A CN2 intercept claims by analyzer port, virtual networks or targets: give at "
            "least one."
        ]
    }


def test_a_cn2_intercept_has_no_mirror_id_nor_session_id():
    intercept = cn2_intercept(make_case(), intercept_id=0x300, sid=0x90)
    errors = errors_of(intercept)
    assert errors["intercept_id"] == [
        "A CN2 intercept has no mirror id: it claims Contrail frames by analyzer port, "
        "virtual network or target."
    ]
    assert errors["sid"] == ["A CN2 intercept has no session id."]


def test_a_jmirror_intercept_needs_a_mirror_id_and_no_contrail_claims():
    case = make_case()
    intercept = Intercept(
        case=case,
        liid="JM-1",
        analyzer_port=8099,
        virtual_networks=["red"],
        targets=["10.0.0.1"],
        valid_from=case.valid_from,
        valid_until=case.valid_until,
    )
    assert errors_of(intercept) == {
        "intercept_id": ["A jmirror intercept claims by mirror id: give one."],
        "analyzer_port": ["Only a CN2 intercept claims by analyzer port."],
        "virtual_networks": ["Only a CN2 intercept claims by virtual network."],
        "targets": ["Only a CN2 intercept claims by target."],
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("analyzer_port", 0, "greater than or equal to 1"),
        ("analyzer_port", 65536, "less than or equal to 65535"),
        ("kind", "vxlan", "Value 'vxlan' is not a valid choice."),
        ("virtual_networks", "red", "Give the virtual networks as a list of names."),
        ("virtual_networks", [7], "Virtual network 7 is not a name (text)."),
        (
            "virtual_networks",
            [""],
            "Virtual network '' is 0 characters long; a VN name is 1 to 255.",
        ),
        (
            "virtual_networks",
            ["x" * 256],
            "Virtual network 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' is 256 characters "
            "long; a VN name is 1 to 255.",
        ),
        (
            "virtual_networks",
            ["red\x00"],
            "Virtual network 'red\\x00': a VN name is printable ASCII only (no NUL, no control "
            "or non-ASCII character).",
        ),
        ("virtual_networks", ["réseau"], "a VN name is printable ASCII only"),
        ("virtual_networks", ["red", "red"], "Virtual network 'red' is listed twice."),
        (
            "virtual_networks",
            [f"vn{n}" for n in range(65)],
            "At most 64 virtual networks per intercept (65 given).",
        ),
        ("targets", "10.0.0.1", "Give the targets as a list of addresses or prefixes."),
        ("targets", [167772161], "Target 167772161 is not an address or prefix (text)."),
        (
            "targets",
            ["10.0.0.256"],
            "Target '10.0.0.256' is not an IPv4 or IPv6 address or prefix.",
        ),
        ("targets", ["10.0.0.0/33"], "is not an IPv4 or IPv6 address or prefix"),
        ("targets", ["host.example"], "is not an IPv4 or IPv6 address or prefix"),
        ("targets", ["fe80::1%eth0"], "is not an IPv4 or IPv6 address or prefix"),
        ("targets", [" 10.0.0.1"], "is not an IPv4 or IPv6 address or prefix"),
        (
            "targets",
            ["10.0.0.5/24"],
            "Target '10.0.0.5/24' has bits set beyond its prefix length: did you mean 10.0.0.0/24?",
        ),
        (
            "targets",
            ["10.0.0.1", "10.0.0.1/32"],
            "Target '10.0.0.1/32' is listed twice (as 10.0.0.1).",
        ),
        (
            "targets",
            [f"10.0.0.{n}" for n in range(65)],
            "At most 64 targets per intercept (65 given).",
        ),
    ],
)
def test_cn2_claims_are_validated(field: str, value: object, message: str):
    intercept = cn2_intercept(make_case(), **{field: value})
    assert any(message in text for text in errors_of(intercept)[field])


def test_the_largest_lists_are_accepted():
    intercept = cn2_intercept(
        make_case(),
        virtual_networks=["x" * 254 + str(n % 10) for n in range(10)]
        + [f"vn{n}" for n in range(54)],
        targets=[f"10.0.0.{n}" for n in range(64)],
    )
    intercept.full_clean()


def test_the_database_refuses_a_cn2_intercept_with_a_mirror_id():
    intercept = make_intercept(intercept_id=0x300)
    with pytest.raises(IntegrityError), transaction.atomic():
        Intercept.objects.filter(pk=intercept.pk).update(kind=Intercept.Kind.CN2)


def test_the_database_refuses_a_jmirror_intercept_without_a_mirror_id():
    intercept = make_intercept(intercept_id=0x300)
    with pytest.raises(IntegrityError), transaction.atomic():
        Intercept.objects.filter(pk=intercept.pk).update(intercept_id=None)


def test_a_cn2_intercept_names_only_vrouters_and_a_jmirror_one_none():
    case = make_case()
    mx, vr = make_router(name="mx1"), vrouter(name="vr1")
    assert errors_of(cn2_intercept(case, routers=[mx, vr])) == {
        "routers": [
            "mx1: not a CN2 vRouter; a CN2 intercept claims only the Contrail frames vRouters send."
        ]
    }
    jmirror = Intercept(
        case=case,
        liid="JM-1",
        intercept_id=0x300,
        valid_from=case.valid_from,
        valid_until=case.valid_until,
    )
    jmirror.pending_router_ids = frozenset({mx.pk, vr.pk})
    assert errors_of(jmirror) == {
        "routers": [
            "vr1: a CN2 vRouter, which sends Contrail frames; only a CN2 intercept claims them."
        ]
    }
    cn2_intercept(case, routers=[vr]).full_clean()


def test_the_stored_routers_are_checked_when_none_are_pending():
    intercept = make_intercept(intercept_id=0x300, routers=[vrouter()])
    assert "routers" in errors_of(Intercept.objects.get(pk=intercept.pk))


OVERLAP = (
    "two intercepts must never claim the same frame. Virtual networks and targets do not "
    "keep two intercepts apart (a frame carries two VN names and two addresses, and one from "
    "a target of one to a target of the other would match both): give each mirror "
    "destination its own analyzer port."
)


@pytest.mark.parametrize(
    ("first", "second", "conflict"),
    [
        pytest.param({}, {}, True, id="same-port"),
        pytest.param({}, {"analyzer_port": 8100}, False, id="different-ports"),
        pytest.param({"analyzer_port": None, "targets": ["10.0.0.1"]}, {}, True, id="any-port"),
        pytest.param({}, {"analyzer_port": None, "targets": ["10.0.0.1"]}, True, id="any-port-2"),
        pytest.param(
            {"virtual_networks": ["red"]},
            {"virtual_networks": ["blue"]},
            True,
            id="vns-do-not-separate",
        ),
        pytest.param(
            {"targets": ["10.0.0.1"]}, {"targets": ["10.0.0.2"]}, True, id="targets-do-not"
        ),
        pytest.param({"routers": "a"}, {"routers": "b"}, False, id="disjoint-vrouters"),
        pytest.param({"routers": "a"}, {"routers": "ab"}, True, id="shared-vrouter"),
        pytest.param({"routers": "a"}, {}, True, id="any-vrouter"),
        pytest.param({"window": (0, 10)}, {"window": (10, 20)}, False, id="adjacent-windows"),
        pytest.param({"window": (0, 11)}, {"window": (10, 20)}, True, id="overlapping-windows"),
    ],
)
def test_the_cn2_overlap_rule(first: dict[str, object], second: dict[str, object], conflict: bool):
    case = make_case()
    routers = {"a": vrouter(), "b": vrouter()}

    def fields_of(spec: dict[str, object]) -> dict[str, object]:
        start, end = spec.pop("window", (0, 20))  # type: ignore[misc]
        chosen = [routers[name] for name in str(spec.pop("routers", ""))]
        return spec | {
            "valid_from": case.valid_from + timedelta(hours=start),
            "valid_until": case.valid_from + timedelta(hours=end),
            "routers": chosen,
        }

    stored = cn2_intercept(case, liid="FIRST", **fields_of(dict(first)))
    stored.full_clean()
    stored.save()
    stored.routers.set(stored.pending_router_ids)  # type: ignore[arg-type]
    candidate = cn2_intercept(case, liid="SECOND", **fields_of(dict(second)))
    if conflict:
        with pytest.raises(ValidationError) as raised:
            candidate.full_clean()
        (message,) = raised.value.messages
        assert message.startswith(f"Intercept FIRST (case {case.reference}) already claims ")
        assert message.endswith(OVERLAP)
    else:
        candidate.full_clean()


def test_the_cn2_overlap_message_names_both_claims():
    case = make_case()
    first = cn2_intercept(case, liid="FIRST", virtual_networks=["red"])
    first.full_clean()
    first.save()
    with pytest.raises(ValidationError) as raised:
        cn2_intercept(case, liid="SECOND", analyzer_port=None, targets=["10.0.0.1"]).full_clean()
    assert raised.value.messages == [
        f"Intercept FIRST (case {case.reference}) already claims Contrail frames (analyzer "
        "port 8099; VN red) from an overlapping set of vRouters in an overlapping window, "
        f"and this one would claim on any analyzer port; {OVERLAP}"
    ]


def test_cn2_and_jmirror_intercepts_never_overlap():
    case = make_case()
    make_intercept(case, liid="JM-1", intercept_id=0x300)
    cn2_intercept(case).full_clean()
    stored = cn2_intercept(case)
    stored.full_clean()
    stored.save()
    Intercept(
        case=case,
        liid="JM-2",
        intercept_id=0x301,
        valid_from=case.valid_from,
        valid_until=case.valid_until,
    ).full_clean()


@pytest.mark.parametrize(
    ("kind", "fmt", "error"),
    [
        (Router.Kind.CN2, Router.Format.CONTRAIL, None),
        (Router.Kind.MX, Router.Format.JMIRROR, None),
        (
            Router.Kind.CN2,
            Router.Format.JMIRROR,
            "A CN2 vRouter sends the Contrail Juniper header.",
        ),
        (
            Router.Kind.E_SERIES,
            Router.Format.CONTRAIL,
            "E Series and MX routers send jmirror; only a CN2 vRouter sends the Contrail "
            "Juniper header.",
        ),
    ],
)
def test_a_routers_format_is_its_kinds(kind: str, fmt: str, error: str | None):
    router = Router(name="r", address="192.0.2.50", kind=kind, format=fmt)
    if error is None:
        router.full_clean()
    else:
        with pytest.raises(ValidationError) as raised:
            router.full_clean()
        assert raised.value.message_dict == {"format": [error]}
    assert Router.format_of(kind) in Router.Format.values
    assert Router.default_port(Router.Kind.CN2) == 8099

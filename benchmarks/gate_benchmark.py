"""Benchmark: :meth:`receiver.gate.Gate.claim` per packet, for each outcome.

    .venv/bin/python benchmarks/gate_benchmark.py [--routers 100] [--intercepts 5000]

Builds a gate of ``--routers`` routers and ``--intercepts`` intercepts (a third of them
router-scoped, half of them pinned to a session id) and times one claim of each kind,
best of ``--repeat`` runs. Then the same for Contrail frames (``claim_contrail``): a
gate of ``--cn2`` CN2 intercepts on distinct analyzer ports, one more on the port
measured with 64 single-address targets and a prefix. It prints the figures; no test
asserts them.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver.gate import Gate, InterceptRule, RouterRule

NOW = 1_795_000_000 * 10**9


def build(routers: int, intercepts: int) -> Gate:
    return Gate(
        [RouterRule(number, f"10.0.{number // 256}.{number % 256}") for number in range(routers)],
        [
            InterceptRule(
                intercept_id_pk=number,
                liid=f"LIID-{number}",
                case_id=1,
                case_reference="CASE-1",
                mirror_id=number,
                sid=number * 7 if number % 2 == 0 else None,
                router_ids=frozenset({5}) if number % 3 == 0 else frozenset(),
                window=(0, 2 * NOW),
                active=True,
                keep_content=True,
            )
            for number in range(1, intercepts + 1)
        ],
    )


def build_cn2(routers: int, intercepts: int) -> Gate:
    vrouters = [
        RouterRule(number, f"10.1.{number // 256}.{number % 256}", contrail=True)
        for number in range(routers)
    ]
    common = {"case_id": 1, "case_reference": "CASE-1", "mirror_id": None, "sid": None}
    rules = [
        InterceptRule(
            intercept_id_pk=number,
            liid=f"CN2-{number}",
            router_ids=frozenset({5}) if number % 3 == 0 else frozenset(),
            window=(0, 2 * NOW),
            active=True,
            keep_content=True,
            kind="cn2",
            analyzer_port=10000 + number,
            **common,
        )
        for number in range(1, intercepts + 1)
    ]
    rules.append(
        InterceptRule(
            intercept_id_pk=0,
            liid="CN2-TARGETS",
            router_ids=frozenset(),
            window=(0, 2 * NOW),
            active=True,
            keep_content=True,
            kind="cn2",
            analyzer_port=8099,
            virtual_networks=frozenset({"red", "blue"}),
            targets=(*(f"192.0.2.{n}" for n in range(64)), "198.51.100.0/24"),
            **common,
        )
    )
    return Gate(vrouters, rules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", type=int, default=100)
    parser.add_argument("--intercepts", type=int, default=5000)
    parser.add_argument("--cn2", type=int, default=100)
    parser.add_argument("--number", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    claim = build(options.routers, options.intercepts).claim
    cases = {
        "claimed": ("10.0.0.5", 1, 0x90),
        "claimed, pinned sid and router scope": ("10.0.0.5", 6, 42),
        "no_intercept (sid not pinned one)": ("10.0.0.5", 2, 0x90),
        "no_intercept (unknown mirror id)": ("10.0.0.5", 10**6, 0x90),
        "unknown_router": ("192.0.2.1", 1, 0x90),
    }
    for name, (address, mid, sid) in cases.items():
        best = min(
            timeit.repeat(
                lambda a=address, m=mid, s=sid: claim(a, m, s, NOW),
                number=options.number,
                repeat=options.repeat,
            )
        )
        outcome = claim(address, mid, sid, NOW)
        label = outcome if isinstance(outcome, str) else "Claim"
        print(f"{name:40} {best / options.number * 1e6:6.3f} us  -> {label}")
    contrail = build_cn2(options.routers, options.cn2).claim_contrail
    frames = {
        "contrail: claimed by port": ("10.1.0.5", 10001, None, None, None, None),
        "contrail: claimed, VN and exact target": (
            "10.1.0.5",
            8099,
            "red",
            "green",
            "10.9.9.9",
            "192.0.2.40",
        ),
        "contrail: claimed, VN and prefix": (
            "10.1.0.5",
            8099,
            "blue",
            None,
            "198.51.100.7",
            "10.9.9.9",
        ),
        "contrail: no_intercept (no target)": (
            "10.1.0.5",
            8099,
            "red",
            None,
            "10.9.9.9",
            "10.9.9.8",
        ),
        "contrail: no_intercept (no VN)": (
            "10.1.0.5",
            8099,
            "green",
            None,
            "192.0.2.1",
            None,
        ),
        "contrail: no_intercept (port)": ("10.1.0.5", 9, None, None, None, None),
        "contrail: unknown_router": ("192.0.2.1", 8099, None, None, None, None),
    }
    for name, frame in frames.items():
        best = min(
            timeit.repeat(
                lambda f=frame: contrail(*f, NOW),
                number=options.number,
                repeat=options.repeat,
            )
        )
        outcome = contrail(*frame, NOW)
        label = outcome if isinstance(outcome, str) else "Claim"
        print(f"{name:40} {best / options.number * 1e6:6.3f} us  -> {label}")
    print("(each figure includes timeit's lambda call, about 0.05 us)")


if __name__ == "__main__":
    main()

"""Benchmark: :meth:`receiver.gate.Gate.claim` per packet, for each outcome.

    .venv/bin/python benchmarks/gate_benchmark.py [--routers 100] [--intercepts 5000]

Builds a gate of ``--routers`` routers and ``--intercepts`` intercepts (a third of them
router-scoped, half of them pinned to a session id) and times one claim of each kind,
best of ``--repeat`` runs. It prints the figures; no test asserts them.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", type=int, default=100)
    parser.add_argument("--intercepts", type=int, default=5000)
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
    print("(each figure includes timeit's lambda call, about 0.05 us)")


if __name__ == "__main__":
    main()

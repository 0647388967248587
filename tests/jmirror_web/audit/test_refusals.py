"""The rate limit of the refusal audit (jmirror_web.audit.refusals.RefusalLimiter): the
first refusal of a probe per window is written, the others counted into the next one
written, each user's events per window bounded, and nothing counted is dropped
silently."""

from __future__ import annotations

import pytest

from jmirror_web.audit.refusals import Admitted, RefusalLimiter
from jmirror_web.environment import ConfigurationError
from tests.conftest import SettingsLoader

WINDOW = 60.0
ANA = ("user", 1)


def probe(object_id: int, where: str = "console:case") -> tuple[str, str, str, str]:
    return ("access.refused", "intercepts.Case", str(object_id), where)


def test_the_first_refusal_is_written_and_the_repeats_counted_into_the_next_window() -> None:
    limiter = RefusalLimiter()
    assert limiter.admit(ANA, probe(7), WINDOW, now=0.0) == Admitted(0, 0)
    for second in range(1, 6):
        assert limiter.admit(ANA, probe(7), WINDOW, now=float(second)) is None
    assert limiter.admit(ANA, probe(7), WINDOW, now=59.9) is None
    assert limiter.admit(ANA, probe(7), WINDOW, now=60.0) == Admitted(6, 0)
    assert limiter.admit(ANA, probe(7), WINDOW, now=61.0) is None


def test_another_object_page_or_user_is_another_probe() -> None:
    limiter = RefusalLimiter()
    assert limiter.admit(ANA, probe(7), WINDOW, now=0.0) is not None
    assert limiter.admit(ANA, probe(8), WINDOW, now=0.0) is not None
    assert limiter.admit(ANA, probe(7, where="api:case-detail"), WINDOW, now=0.0) is not None
    assert limiter.admit(("user", 2), probe(7), WINDOW, now=0.0) is not None
    assert limiter.admit(("address", "192.0.2.1"), probe(7), WINDOW, now=0.0) is not None
    assert limiter.admit(("address", "192.0.2.2"), probe(7), WINDOW, now=0.0) is not None


def test_walking_ids_is_bounded_by_the_users_budget_and_reported_later() -> None:
    limiter = RefusalLimiter(budget=3)
    written = [limiter.admit(ANA, probe(n), WINDOW, now=1.0) for n in range(10)]
    assert [w for w in written if w is not None] == [Admitted(0, 0)] * 3
    # Another user has a budget of their own.
    assert limiter.admit(("user", 2), probe(1), WINDOW, now=1.0) == Admitted(0, 0)
    # The next window: the seven left out are reported on the first event written.
    assert limiter.admit(ANA, probe(100), WINDOW, now=61.0) == Admitted(0, 7)
    assert limiter.admit(ANA, probe(101), WINDOW, now=61.0) == Admitted(0, 0)


def test_a_tally_pushed_out_of_the_map_is_reported_not_lost() -> None:
    limiter = RefusalLimiter(max_probes=2)
    assert limiter.admit(ANA, probe(1), WINDOW, now=0.0) is not None
    assert limiter.admit(ANA, probe(1), WINDOW, now=1.0) is None
    assert limiter.admit(ANA, probe(1), WINDOW, now=2.0) is None
    assert limiter.admit(ANA, probe(2), WINDOW, now=3.0) is not None
    assert limiter.admit(ANA, probe(3), WINDOW, now=4.0) is not None  # pushes probe 1 out
    # Probe 1 is written again (its tally is gone), with its two repeats as other ones.
    assert limiter.admit(ANA, probe(1), WINDOW, now=5.0) == Admitted(0, 2)


def test_the_map_stays_bounded() -> None:
    limiter = RefusalLimiter(max_probes=100, budget=10**9)
    for n in range(10_000):
        limiter.admit(("address", f"192.0.2.{n % 250}"), probe(n), WINDOW, now=float(n))
    assert len(limiter._probes) <= 100
    assert len(limiter._actors) <= 100


def test_a_user_pushed_out_with_unreported_refusals_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RefusalLimiter(max_probes=2, budget=1)
    limiter.admit(ANA, probe(1), WINDOW, now=0.0)
    limiter.admit(ANA, probe(2), WINDOW, now=0.0)  # over the budget: unreported
    with caplog.at_level("WARNING", logger="jmirror_web.audit.refusals"):
        limiter.admit(("user", 2), probe(1), WINDOW, now=0.0)
        limiter.admit(("user", 3), probe(1), WINDOW, now=0.0)
    assert "1 refusals by ('user', 1) not written (tally map full)" in caplog.text


def test_the_window_setting_is_read_and_bounded(load_settings: SettingsLoader) -> None:
    assert load_settings({})["JMIRROR_REFUSAL_AUDIT_SECONDS"] == 600
    assert (
        load_settings({"JMIRROR_REFUSAL_AUDIT_SECONDS": "60"})["JMIRROR_REFUSAL_AUDIT_SECONDS"]
        == 60
    )
    for bad, message in (
        ("0", "JMIRROR_REFUSAL_AUDIT_SECONDS=0 is below the minimum 1"),
        ("86401", "JMIRROR_REFUSAL_AUDIT_SECONDS=86401 is above the maximum 86400"),
        ("soon", "JMIRROR_REFUSAL_AUDIT_SECONDS='soon' is not an integer"),
    ):
        with pytest.raises(ConfigurationError) as raised:
            load_settings({"JMIRROR_REFUSAL_AUDIT_SECONDS": bad})
        assert str(raised.value) == message

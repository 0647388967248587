"""Fixtures shared by the receiver's tests."""

from __future__ import annotations

import pytest

from tests.receiver.router_captures import Capture, build_all, real


@pytest.fixture(scope="session")
def built_router_captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Capture]:
    """The built twins of the router captures, by file name, made once per run."""
    return build_all(tmp_path_factory.mktemp("router-captures"))


@pytest.fixture
def router_capture(
    request: pytest.FixtureRequest, built_router_captures: dict[str, Capture]
) -> Capture:
    """The router capture a test is parametrized with (``capture_params``)."""
    name, origin = request.param
    if origin == "built":
        return built_router_captures[name]
    return real(name)

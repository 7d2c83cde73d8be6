"""Shared pytest options."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

# "ci": a fixed budget, the same examples on every run; "fuzz": many random examples.
_SLOW_EXPORTS = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None,
                          suppress_health_check=_SLOW_EXPORTS, print_blob=True)
settings.register_profile("fuzz", max_examples=500, deadline=None,
                          suppress_health_check=_SLOW_EXPORTS, print_blob=True)
settings.load_profile("ci")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full-sweep",
        action="store_true",
        help="run the full cartesian configuration sweep (long) instead of the curated CI set",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sweep_case" in metafunc.fixturenames:
        from test_sweep import curated_cases, full_cases

        full = metafunc.config.getoption("--full-sweep")
        cases = full_cases() if full else curated_cases()
        metafunc.parametrize("sweep_case", cases, ids=[str(c) for c in cases])

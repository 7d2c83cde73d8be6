"""Sessions: ``tests`` (the README's test command: ruff, mypy, pytest) and ``sweep`` (the full sweep).

Environments live outside the clone (``$DCE_NOX_ENVDIR``, by default
``~/.cache/deform_conv2d_onnx_exporter/nox``) and are reused: each holds a full torch, several GB,
which is also why linting runs in the test environment rather than in one of its own.
"""

from __future__ import annotations

import os

import nox

nox.options.envdir = os.environ.get(
    "DCE_NOX_ENVDIR", os.path.expanduser("~/.cache/deform_conv2d_onnx_exporter/nox")
)
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

#: The torch release tested by default; pip installs it from this machine's local files.
TORCH = ("2.14.1", "0.29.1")


def _install(session: nox.Session, torch_version: str, torchvision_version: str, extra: str) -> None:
    # torch first and pinned, so that resolving the package never pulls another torch.
    session.install(f"torch=={torch_version}", f"torchvision=={torchvision_version}")
    session.install("-e", f".[{extra}]")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """ruff, mypy, then the test suite on the default torch; extra arguments go to pytest."""
    _install(session, *TORCH, "test,dev")
    session.run("ruff", "check", ".")
    session.run("mypy")
    session.run("python", "-m", "pytest", "-q", "--durations=15", *session.posargs)


@nox.session(python="3.11")
def sweep(session: nox.Session) -> None:
    """The cartesian configuration sweep (hundreds of exports per exporter; about an hour)."""
    _install(session, *TORCH, "test")
    session.run("python", "-m", "pytest", "-q", "--full-sweep", "tests/test_sweep.py", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The speed and memory benchmark (benchmarks/bench.py); extra arguments go to it."""
    _install(session, *TORCH, "ort")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python="3.11")
def fuzz(session: nox.Session) -> None:
    """The property-based tests with 500 random examples instead of CI's fixed 60."""
    _install(session, *TORCH, "test")
    session.run("python", "-m", "pytest", "-q", "--hypothesis-profile=fuzz", "tests/test_properties.py",
                *session.posargs)

"""Sessions: ``tests`` (the README's test command: ruff, mypy, pytest), ``sweep`` (the full sweep),
``bench``, ``fuzz`` (500 property-based examples), and two runtimes that need environments of their
own, without torch: ``ort_without_deformconv`` (onnxruntime 1.24.4) and ``openvino``.

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


def _install_without_torch(session: nox.Session, *runtimes: str) -> None:
    # The ONNX-file path needs no torch: the package goes in without its dependencies, and the
    # environment stays small (no torch, several GB) and quick to create. hypothesis: conftest.py
    # registers its profiles.
    session.install("onnx>=1.14", "numpy", "packaging>=21", "pytest>=7", "hypothesis>=6", *runtimes)
    session.install("--no-deps", "-e", ".")


#: The rewrite tests that import no torch, and pytest options for them: pyproject's warning
#: filters name torch's warning classes, which these environments cannot import.
TORCH_FREE_TESTS = ("tests/test_runtimes.py", "tests/test_rewrite.py", "tests/test_cli.py")
TORCH_FREE_OPTIONS = ("-q", "-o", "filterwarnings=ignore::DeprecationWarning")


@nox.session(python="3.11")
def ort_without_deformconv(session: nox.Session) -> None:
    """Rewritten models on onnxruntime 1.24.4, the last release without DeformConv."""
    _install_without_torch(session, "onnxruntime==1.24.4")
    session.run("python", "-m", "pytest", *TORCH_FREE_OPTIONS, *TORCH_FREE_TESTS, *session.posargs)


@nox.session(python="3.11")
def openvino(session: nox.Session) -> None:
    """Rewritten models on OpenVINO's CPU plugin (which has no DeformConv), in float32."""
    _install_without_torch(session, "openvino==2026.4.0", "onnxruntime")
    session.run("python", "-m", "pytest", *TORCH_FREE_OPTIONS, "tests/test_runtimes.py", *session.posargs)


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

"""Shared pytest options and markers; with torch installed, the selection of tests by what it can do.

The selection and the per-path counts live in ``paths.py``, registered here as a plugin when torch
is installed: the torch-free sessions (``ort_without_deformconv``, ``openvino``) share this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, settings

# "ci": a fixed budget, the same examples on every run; "fuzz": many random examples.
_SLOW_EXPORTS = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=_SLOW_EXPORTS,
    print_blob=True,
)
settings.register_profile(
    "fuzz", max_examples=500, deadline=None, suppress_health_check=_SLOW_EXPORTS, print_blob=True
)
settings.load_profile("ci")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full-sweep",
        action="store_true",
        help="run the full cartesian configuration sweep (long) instead of the curated CI set",
    )
    parser.addoption(
        "--results-json",
        default=None,
        help="write the versions, capabilities and per-path counts of this run here",
    )
    parser.addoption(
        "--toolchain",
        action="store_true",
        help="collect tests/toolchain: the deployment tools of nox's toolchain session",
    )
    parser.addoption(
        "--precision",
        action="store_true",
        help="collect tests/precision: the half-precision pipelines of nox's precision session",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Optional[bool]:
    # The deployment tools and the half-precision runtimes are installed by their own sessions only.
    for folder in ("toolchain", "precision"):
        if collection_path.name == folder and not config.getoption(f"--{folder}"):
            return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dynamo: the test exports with the dynamo exporter")
    config.addinivalue_line(
        "markers",
        "refusal: the test expects an error before any export, so its exporter, "
        "lowering and opset need no support",
    )
    config.addinivalue_line(
        "markers", "symbolic_sizes: the test needs sizes kept symbolic through F.interpolate"
    )
    config.addinivalue_line(
        "markers", "onnx_only: the test rewrites ONNX models; its parameters name no export path"
    )
    config.addinivalue_line(
        "markers",
        "torch_writes_deformconv: the test needs torch's own dynamo exporter to write ONNX "
        "DeformConv for deform_conv2d",
    )
    config.addinivalue_line(
        "markers",
        "reference_evaluator: the test runs its models on ONNX's reference evaluator, not on ONNX Runtime",
    )
    config.addinivalue_line(
        "markers", "dynamo_default: the test needs torch.onnx.export to use the dynamo exporter by default"
    )
    config.addinivalue_line(
        "markers", "recorded_results: the test reads the installed torch's row in tools/matrix-results"
    )
    try:
        import torch  # noqa: F401
    except ImportError:
        return  # a torch-free session: no export paths to select or count
    import paths

    config.pluginmanager.register(paths, "deform_conv2d_paths")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sweep_case" in metafunc.fixturenames:
        from test_sweep import curated_cases, full_cases

        full = metafunc.config.getoption("--full-sweep")
        cases = full_cases() if full else curated_cases()
        metafunc.parametrize("sweep_case", cases, ids=[str(c) for c in cases])

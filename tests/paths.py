"""Pytest plugin (registered by conftest.py when torch is installed): tests by export path.

A test's *paths* are the ways it exports and runs deform_conv2d: ``legacy`` or ``dynamo`` (its
``exporter`` parameter, else ``dynamo`` when marked so, else ``legacy``) and ``native`` (its
``lowering`` parameter is ``"native"``). Tests whose paths the installed torch or ONNX Runtime
lack are deselected here, by the package's own version detection
(:mod:`deform_conv2d_onnx_exporter.versions`, through ``support.missing_path``); no test keeps a
list of versions. The terminal summary then says which paths ran, counted from what the tests
really emitted, and ``--results-json`` writes the same to a file for README's support table.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import onnxruntime
import pytest
import torch
from _pytest.terminal import TerminalReporter
from packaging.version import Version
from support import ORT_HAS_DEFORMCONV, TORCH, missing_path

from deform_conv2d_onnx_exporter import versions
from deform_conv2d_onnx_exporter.emitter import EMITTED

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import support_table  # noqa: E402

PATHS = ("legacy", "dynamo", "native")
# Which paths the running test really emitted: the package's emitters count themselves, and every
# DeformConv node, in EMITTED.
_COUNTS = pytest.StashKey[Counter]()
_DESELECTED = pytest.StashKey[Counter]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_COUNTS] = Counter()
    config.stash[_DESELECTED] = Counter()


def _item_paths(item: pytest.Item) -> tuple[str, Optional[str], Optional[int], Optional[torch.dtype]]:
    params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    exporter = params.get("exporter") or ("dynamo" if item.get_closest_marker("dynamo") else "legacy")
    return exporter, params.get("lowering"), params.get("opset"), params.get("dtype")


def capabilities() -> dict[str, Any]:
    """What the package's version detection and the ONNX Runtime probe find here: a support-table row."""
    return {
        "exporters": TORCH.exporters(),
        "legacy_default_opset": TORCH.legacy_default_opset,
        "legacy_max_opset": TORCH.legacy_max_opset,
        "dynamo_default_opset": TORCH.dynamo_default_opset if TORCH.has_dynamo_translation else None,
        "export_default": TORCH.default_exporter(),
        "onnxruntime_deformconv": ORT_HAS_DEFORMCONV,
    }


def recorded_result() -> Optional[dict[str, Any]]:
    """The results ``tools/matrix-results`` holds for the installed torch release, or None."""
    release = Version(torch.__version__).base_version
    for result in support_table.load():
        if Version(result["versions"]["torch"]).base_version == release:
            return result
    return None


def _torch_writes_deformconv() -> Optional[str]:
    """Why torch's own dynamo exporter cannot write ONNX DeformConv here, or None if it can."""
    if not TORCH.has_dynamo_keyword:
        return f"torch's own DeformConv: torch {TORCH.version} has no dynamo= keyword"
    version = metadata.version("onnxscript")
    if not versions.onnxscript_translates_deform_conv2d(version):
        return (
            f"torch's own DeformConv: onnxscript {version} does not translate deform_conv2d "
            f"(needs >= {versions.ONNXSCRIPT_DEFORMCONV})"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        exporter, lowering, opset, dtype = _item_paths(item)
        if item.get_closest_marker("refusal"):
            lowering, opset = None, None
        if item.get_closest_marker("onnx_only"):
            exporter, lowering, opset, dtype = "legacy", None, None, None
        reason = missing_path(
            exporter,
            lowering,
            opset,
            dtype=dtype,
            on_onnxruntime=item.get_closest_marker("reference_evaluator") is None,
        )
        if reason is None and item.get_closest_marker("torch_writes_deformconv"):
            reason = _torch_writes_deformconv()
        if (
            reason is None
            and exporter == "dynamo"
            and item.get_closest_marker("symbolic_sizes")
            and not TORCH.dynamo_symbolic_sizes
        ):
            reason = (
                f"dynamo symbolic sizes: torch {TORCH.version} fixes sizes computed by "
                f"F.interpolate to the example's (needs >= {versions.DYNAMO_SYMBOLIC_SIZES})"
            )
        if reason is None and item.get_closest_marker("dynamo_default") and not TORCH.dynamo_by_default:
            reason = (
                f"dynamo by default: torch {TORCH.version}'s torch.onnx.export uses the legacy "
                f"exporter unless told (dynamo is the default from {versions.DYNAMO_BY_DEFAULT})"
            )
        if reason is None and item.get_closest_marker("recorded_results") and recorded_result() is None:
            reason = (
                f"support table: tools/matrix-results has no results for torch {TORCH.version} "
                "yet (its nox session writes them)"
            )
        if reason is None:
            keep.append(item)
        else:
            drop.append(item)
            config.stash[_DESELECTED][reason] += 1
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _record_paths() -> None:
    EMITTED.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        counts = item.config.stash[_COUNTS]
        for path in sorted(p for p in EMITTED if p in PATHS):
            counts[f"{path} {report.outcome}"] += 1


def _versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def pytest_terminal_summary(
    terminalreporter: TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    counts: Counter = config.stash[_COUNTS]
    deselected: Counter = config.stash[_DESELECTED]
    stats = {key: len(terminalreporter.stats.get(key, [])) for key in ("passed", "failed", "skipped")}
    ran = " ".join(f"{path}={counts[f'{path} passed']}" for path in PATHS)
    failed = " ".join(f"{path}={counts[f'{path} failed']}" for path in PATHS if counts[f"{path} failed"])
    line = f"paths run (tests passed per path): {ran}" + (f"; failed: {failed}" if failed else "")
    terminalreporter.write_sep("-", f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    terminalreporter.write_line(line)
    for reason, number in sorted(deselected.items()):
        terminalreporter.write_line(f"deselected {number}: {reason}")
    path = config.getoption("--results-json")
    if path:
        results = {
            "python": platform.python_version(),
            "versions": _versions(),
            "capabilities": capabilities(),
            "tests": {**stats, "deselected": sum(deselected.values()), "exit_status": int(exitstatus)},
            "paths_passed": {p: counts[f"{p} passed"] for p in PATHS},
            "paths_failed": {p: counts[f"{p} failed"] for p in PATHS},
            "deselected": dict(sorted(deselected.items())),
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as file:
            json.dump(results, file, indent=1, sort_keys=True)
            file.write("\n")

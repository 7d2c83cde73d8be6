"""README's support table comes from the matrix's results; they must agree with version detection.

``python tools/support_table.py --check`` (run by .ci/run after the sessions) compares the table
with the results; this test compares the recorded row of the installed torch with what
``deform_conv2d_onnx_exporter.versions`` detects here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version
from support import ORT_HAS_DEFORMCONV, TORCH

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import support_table  # noqa: E402


def _recorded_result() -> dict:
    release = Version(torch.__version__).base_version
    for result in support_table.load():
        if Version(result["versions"]["torch"]).base_version == release:
            return result
    pytest.skip(f"torch {release} has no results in tools/matrix-results yet (its nox session writes them)")


def test_recorded_capabilities_are_those_of_the_installed_torch() -> None:
    """The table's row for this torch says what versions.installed() detects here and now."""
    recorded = _recorded_result()["capabilities"]
    assert recorded == {
        "exporters": TORCH.exporters(),
        "legacy_default_opset": TORCH.legacy_default_opset,
        "legacy_max_opset": TORCH.legacy_max_opset,
        "dynamo_default_opset": TORCH.dynamo_default_opset if TORCH.has_dynamo_translation else None,
        "export_default": TORCH.default_exporter(),
        "onnxruntime_deformconv": ORT_HAS_DEFORMCONV,
    }

"""Rewritten models on every runtime installed, against DeformConv run by ONNX's reference evaluator.

No torch here, so that the nox sessions ``ort_without_deformconv`` (onnxruntime 1.24.4) and
``openvino`` run this file in small environments. Runtimes: ONNX Runtime (whatever version is
installed), ONNX's reference evaluator, and OpenVINO's CPU plugin when it is installed.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx_models import (
    CASES,
    NUMPY_CHOOSE_LIMIT,
    NodeCase,
    build,
    expected,
    feeds,
    onnxruntime_max_opset,
    reference_output,
    tolerance,
)

from deform_conv2d_onnx_exporter import decompose_model, versions
from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

#: These tests rewrite ONNX models: their ``opset`` and ``lowering`` are not an exporter's.
pytestmark = pytest.mark.onnx_only

RunModel = Callable[[onnx.ModelProto, dict[str, np.ndarray]], np.ndarray]


def _onnxruntime(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def _openvino(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import openvino

    core = openvino.Core()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        onnx.save(model, path)
        # CPUs with bf16 units default to bf16 inference (error ~0.2); we test the graph, in f32.
        compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled(inputs)[compiled.output(0)]


def _runtimes() -> dict[str, RunModel]:
    runtimes: dict[str, RunModel] = {"onnxruntime": _onnxruntime, "reference": reference_output}
    try:
        import openvino  # noqa: F401
    except ImportError:
        pass
    else:
        runtimes["openvino"] = _openvino
    return runtimes


RUNTIMES = _runtimes()
LOWERINGS = DECOMPOSITIONS


def _opset_for(lowering: str) -> int:
    return 20 if lowering.startswith("grid_sample") else 19


def _runs(runtime: str, lowering: str, opset: int, case: NodeCase) -> bool:
    """Whether this runtime can run this lowering at all; the combinations it cannot are not generated."""
    if case.dtype == np.float64 and runtime == "openvino":
        return False  # OpenVINO's CPU plugin computes float64 models in float32
    if case.dtype == np.float64 and lowering.startswith("grid_sample"):
        return False  # GridSample's coordinate round trip is float32-exact only (README, Precision)
    if runtime == "reference" and lowering.startswith("grid_sample") and opset < 20:
        return False  # onnx.reference's GridSample-16 refuses mode="bilinear" (its name for linear)
    if runtime == "reference" and lowering == "gatherelements":
        # numpy.choose, behind GatherElements
        return (case.height + 3) * (case.width + 3) <= NUMPY_CHOOSE_LIMIT
    if runtime == "onnxruntime" and opset > onnxruntime_max_opset():
        return False  # this ONNX Runtime refuses the opset (1.15 stops at 18)
    return True


@pytest.mark.parametrize(
    ("case", "runtime", "lowering"),
    [
        pytest.param(case, runtime, lowering, id=f"{case}-{runtime}-{lowering}")
        for case in CASES
        for runtime in RUNTIMES
        for lowering in LOWERINGS
        if _runs(runtime, lowering, _opset_for(lowering), case)
    ],
)
def test_rewritten_node_matches_deformconv(case: NodeCase, runtime: str, lowering: str) -> None:
    rewritten = decompose_model(build(case), _opset_for(lowering), lowering).model
    for batch, size in [(None, None), (3, (6, 11))] if case.symbolic else [(None, None)]:
        got = RUNTIMES[runtime](rewritten, feeds(case, batch=batch, size=size))
        np.testing.assert_allclose(got, expected(case, batch, size), **tolerance(case))


_OPSET_CASE = NodeCase(height=5, width=5, offset_group=2, pads=(1, 2, 0, 1))


@pytest.mark.parametrize(
    ("runtime", "opset"),
    [
        (runtime, opset)
        for runtime in RUNTIMES
        for opset in [12, 16, 18, 22]
        if _runs(runtime, "gather_rows", opset, _OPSET_CASE)
    ],
)
def test_every_target_opset(runtime: str, opset: int) -> None:
    """The default lowering (gather_rows) at each opset."""
    rewritten = decompose_model(build(_OPSET_CASE), opset).model
    assert rewritten.opset_import[0].version == opset
    got = RUNTIMES[runtime](rewritten, feeds(_OPSET_CASE))
    np.testing.assert_allclose(got, expected(_OPSET_CASE), **tolerance(_OPSET_CASE))


def test_onnxruntime_runs_deformconv_only_from_1_25() -> None:
    """Before ONNX Runtime 1.25 the decomposition is the only way to run the model."""
    case = NodeCase()
    if versions.onnxruntime_has_deformconv(onnxruntime.__version__):
        np.testing.assert_allclose(_onnxruntime(build(case), feeds(case)), expected(case), **tolerance(case))
    else:
        with pytest.raises(Exception, match="DeformConv"):
            _onnxruntime(build(case), feeds(case))

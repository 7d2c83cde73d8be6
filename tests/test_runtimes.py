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
from onnx_models import CASES, NodeCase, build, expected, feeds, reference_output, tolerance
from packaging.version import Version

from deform_conv2d_onnx_exporter import decompose_model

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
LOWERINGS = ["grid_sample", "gather_rows", "gathernd", "gatherelements"]


def _skip_reference_evaluator_limits(runtime: str, lowering: str, opset: int, case: NodeCase) -> None:
    if runtime != "reference":
        return
    if lowering == "grid_sample" and opset < 20:
        pytest.skip("onnx.reference's GridSample refuses mode='bilinear', GridSample-16's name for linear")
    if lowering == "gatherelements" and (case.height + 3) * (case.width + 3) > 64:
        pytest.skip("onnx.reference's GatherElements fails on axes longer than 64 (numpy.choose)")


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_rewritten_node_matches_deformconv(case: NodeCase, runtime: str, lowering: str) -> None:
    opset = 20 if lowering == "grid_sample" else 19
    if case.dtype == np.float64 and runtime == "openvino":
        pytest.skip("OpenVINO's CPU plugin computes float64 models in float32")
    if case.dtype == np.float64 and lowering == "grid_sample":
        pytest.skip("GridSample's coordinate round trip is float32-exact only (README, Precision)")
    _skip_reference_evaluator_limits(runtime, lowering, opset, case)
    rewritten = decompose_model(build(case), opset, lowering).model
    for batch, size in [(None, None), (3, (6, 11))] if case.symbolic else [(None, None)]:
        got = RUNTIMES[runtime](rewritten, feeds(case, batch=batch, size=size))
        np.testing.assert_allclose(got, expected(case, batch, size), **tolerance(case))


@pytest.mark.parametrize("opset", [12, 16, 18, 22])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_target_opset(runtime: str, opset: int) -> None:
    """The default lowering at each opset (gather_rows below 16, grid_sample from 16)."""
    case = NodeCase(height=5, width=5, offset_group=2, pads=(1, 2, 0, 1))
    _skip_reference_evaluator_limits(runtime, "grid_sample" if opset >= 16 else "gather_rows", opset, case)
    rewritten = decompose_model(build(case), opset).model
    assert rewritten.opset_import[0].version == opset
    np.testing.assert_allclose(RUNTIMES[runtime](rewritten, feeds(case)), expected(case), **tolerance(case))


def test_onnxruntime_without_deformconv_refuses_the_original() -> None:
    """On ONNX Runtime < 1.25 the decomposition is the only way to run the model."""
    if Version(onnxruntime.__version__) >= Version("1.25"):
        pytest.skip(f"onnxruntime {onnxruntime.__version__} has DeformConv")
    with pytest.raises(Exception, match="DeformConv"):
        _onnxruntime(build(NodeCase()), feeds(NodeCase()))

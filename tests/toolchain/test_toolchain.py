"""Every exported variant of a small DCNv2 network through every deployment tool, against torchvision.

Test ids are ``test_tool[<tool>-<variant>]``, so the tool x variant table falls out of the run; the
conftest prints it with the error figures. A tool bug that no graph can avoid is pinned in
``DOCUMENTED``: its test asserts that failure, and docs/deploying.md gives the workaround.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pytest
from conftest import Table, tool_inputs
from models import VARIANTS, Variant, reference, relative_error

from tools import TOOLS, BatchTool, Tool, quantize_static, run_onnxruntime

TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
#: A quantized model's error may be this many times that of the same model with only its ordinary
#: convolutions quantized.
QUANTIZED_RATIO = 1.5


@dataclass(frozen=True)
class Documented:
    """A failure of a pinned tool version that no change of the graph avoids (docs/deploying.md).

    ``message``: a regular expression the tool's error matches; None when the tool runs but gives
    numbers outside the tolerance.
    """

    reason: str
    message: Optional[str]


_NCNN = Documented(
    "ncnn has no comparison, Where or batch; workaround: lowering='grid_sample_ncnn' (docs/deploying.md)",
    r"layers pnnx left without an ncnn equivalent: .*torch\.where",
)
_TRACT = Documented(
    "tract cannot prove the padded input's Reshape volume with symbolic sizes (gather lowerings, the "
    "default among them); workaround: static sizes (onnxsim overwrite_input_shapes) or grid_sample",
    r"Reshape volume mismatch|Undetermined symbol in expression",
)

_TVM = Documented(
    "TVM's Relax ONNX frontend needs each Reshape's shape at compile time, as an expression it folds "
    "from Shape; it does not fold our sizes (Gather of Shape with a (1,) index, Concat), so every "
    "dynamic variant fails; workaround: static sizes (export with them, or onnxsim "
    "overwrite_input_shapes)",
    r"Reshape requires the input new shape to be Shape",
)
_MNN = Documented(
    "MNN's MatMul that broadcasts the (G, Cout/G, C/G*K) kernel over (B, G, C/G*K, L) columns (the "
    "GridSample lowerings with groups > 1) reads garbage once a later input has a larger batch than "
    "the first; workaround: load_module_from_file(..., dynamic=True), or a module per input shape",
    None,
)

#: (tool, variant) -> the documented failure. An error must match its message (another error
#: fails the test); a tool that no longer fails is judged like any other result.
DOCUMENTED: dict[tuple[str, str], Documented] = {
    **{("pnnx-ncnn", variant.name): _NCNN for variant in VARIANTS if variant.lowering != "grid_sample_ncnn"},
    **{
        ("tract", variant.name): _TRACT
        for variant in VARIANTS
        if variant.dynamic and not variant.lowering.startswith("grid_sample")
    },
    **{("tvm-relax-llvm", variant.name): _TVM for variant in VARIANTS if variant.dynamic},
    ("mnn", "dynamo-ncnn"): _MNN,
    **{
        ("onnx2tf-tflite", variant.name): Documented(
            "onnx2tf lowers ONNX DeformConv to LiteRT's own operators only with group = offset_group "
            "= 1 and static sizes, and writes the second block's (2 of each) as the custom operator "
            "ONNX_DEFORMCONV, which LiteRT lacks; workaround: decompose_model before onnx2tf",
            r"unresolved custom op: ONNX_DEFORMCONV",
        )
        for variant in VARIANTS
        if variant.native
    },
    ("ort-quant-pre-process", "dynamo-gathernd"): Documented(
        "ONNX Runtime's symbolic shape inference gives up on GatherND's output with symbolic sizes "
        "(unsupported broadcast); workaround: quant_pre_process(skip_symbolic_shape=True), or the "
        "default lowering",
        r"Incomplete symbolic shape inference",
    ),
    ("ort-quantize-static-qdq", "dynamo-gathernd"): Documented(
        "quantized coordinates move a gather index out of the image; workaround: "
        "nodes_to_exclude=sampling_nodes(model)",
        r"invalid index found",
    ),
}


def _documented(tool: Tool, variant: Variant) -> Optional[Documented]:
    return DOCUMENTED.get((tool.name, variant.name))


def _message(error: BaseException) -> str:
    """The error on one line: its first line and its last two (the innermost cause), no backtrace."""
    text = str(error).split("Stack backtrace:")[0]  # tract appends Rust's backtrace
    lines = [line.strip()[:250] for line in text.splitlines() if line.strip()]
    if not lines:  # a bare assert: where it failed
        frame = traceback.extract_tb(error.__traceback__)[-1]
        lines = [f"assert in {frame.name} ({os.path.basename(frame.filename)}:{frame.lineno})"]
    return f"{type(error).__name__}: " + " | ".join(lines[:1] + lines[1:][-2:])


def _outputs(
    tool: Tool,
    variant: Variant,
    path: str,
    inputs: list[np.ndarray],
    folder: str,
    batch_results: Callable[[BatchTool], Any],
) -> list[np.ndarray]:
    if isinstance(tool, BatchTool):
        found = batch_results(tool)
        outputs = [found[variant.name, index] for index in range(len(inputs))]
        for output in outputs:
            if isinstance(output, str):
                raise RuntimeError(output)
        return outputs
    return tool.run(path, variant, inputs, folder)


CASES = [
    pytest.param(tool, variant, id=f"{tool.name}-{variant.name}")
    for tool in TOOLS
    for variant in VARIANTS
    if tool.takes(variant)
]


@pytest.mark.parametrize(("tool", "variant"), CASES)
def test_tool(
    tool: Tool,
    variant: Variant,
    exported: dict[str, str],
    network: Any,
    batch_results: Callable[[BatchTool], Any],
    table: Table,
    tmp_path: Any,
) -> None:
    inputs = tool_inputs(tool, variant)
    expected = [reference(network, x) for x in inputs]
    documented = _documented(tool, variant)
    try:
        outputs = _outputs(tool, variant, exported[variant.name], inputs, str(tmp_path), batch_results)
    except Exception as error:
        message = _message(error)
        if documented is not None and documented.message is not None:
            table.failure(tool, variant, message, "documented")
            assert re.search(documented.message, message), f"{tool.name}: the documented failure changed"
            return
        table.failure(tool, variant, message, "error")
        raise
    errors = [relative_error(got, want) for got, want in zip(outputs, expected)]
    if tool.kind == "report":
        table.figure(tool, variant, errors, "ok")
        assert all(np.isfinite(got).all() for got in outputs), f"{tool.name}: non-finite outputs"
        return
    if tool.kind == "quantized":
        baseline = _convs_only_quantized(variant, exported[variant.name], inputs, expected, str(tmp_path))
        limits = [QUANTIZED_RATIO * error for error in baseline]
    else:
        limits = [TOLERANCE[tool.kind]] * len(errors)
    good = all(error <= limit for error, limit in zip(errors, limits))
    if documented is not None and documented.message is None:
        table.figure(tool, variant, errors, "documented")
        assert not good, f"{tool.name}: the documented wrong output is gone ({documented.reason})"
        return
    table.figure(tool, variant, errors, "ok" if good else "WRONG")
    assert good, f"{tool.name}: errors {errors} above {limits} (sizes {[x.shape for x in inputs]})"


def _convs_only_quantized(
    variant: Variant, path: str, inputs: list[np.ndarray], expected: list[np.ndarray], folder: str
) -> list[float]:
    """The errors of the variant with only its Conv nodes QDQ-quantized, at each input."""
    quantized = quantize_static(path, variant, f"{folder}/convs.onnx", op_types_to_quantize=["Conv"])
    return [relative_error(got, want) for got, want in zip(run_onnxruntime(quantized, inputs), expected)]

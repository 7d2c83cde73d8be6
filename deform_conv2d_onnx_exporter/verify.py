"""Run an ONNX model on several runtimes with random inputs and compare it with a reference run.

Used by the ``verify`` command; no torch here. The reference is a model that still has its
DeformConv nodes, run where DeformConv exists: ONNX Runtime >= 1.25, else ONNX's reference
evaluator (plain NumPy loops, exact but slow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import onnx
from onnx import helper

from .params import DeformConvExportError

#: Inputs as a runtime takes them, by graph input name.
Feeds = dict[str, np.ndarray]
#: A runtime: (name with version, function running a model on feeds and returning its outputs).
Runtime = tuple[str, Callable[[onnx.ModelProto, Feeds], list[np.ndarray]]]
#: ``--shape`` values: a symbolic dimension's size, or a whole input's shape.
ShapeOverrides = dict[str, Union[int, list[int]]]

#: Above this many input elements the reference evaluator (NumPy, one node at a time) is skipped.
REFERENCE_EVALUATOR_MAX_ELEMENTS = 1_000_000


@dataclass(frozen=True)
class Comparison:
    """One runtime's outputs against the reference: ``error`` is None when the run failed."""

    runtime: str
    output: str
    error: Optional[float]
    note: str = ""


def random_inputs(model: onnx.ModelProto, shapes: ShapeOverrides, seed: int = 0) -> Feeds:
    """Random values for every graph input that is not an initializer.

    Floats are standard normal (offsets of that size move samples across pixel borders and out
    of the image); integers lie in [0, 10); booleans are fair coins.

    Args:
        shapes: sizes of symbolic dimensions by ``dim_param``, or whole shapes by input name.

    Raises:
        DeformConvExportError: a dimension without a size, naming the ``--shape`` to give.
    """
    rng = np.random.default_rng(seed)
    initializers = {i.name for i in model.graph.initializer}
    feeds: Feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        shape = _concrete_shape(value.name, tensor, shapes)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def _concrete_shape(name: str, tensor: onnx.TypeProto.Tensor, shapes: ShapeOverrides) -> list[int]:
    whole = shapes.get(name)
    if isinstance(whole, list):
        return whole
    dims: list[int] = []
    for axis, dim in enumerate(tensor.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
            continue
        size = shapes.get(dim.dim_param) if dim.dim_param else None
        if not isinstance(size, int):
            label = f"dimension {dim.dim_param!r}" if dim.dim_param else f"dimension {axis}"
            fix = f"--shape {dim.dim_param}=N" if dim.dim_param else f"--shape {name}=AxBx..."
            raise DeformConvExportError(
                f"input {name!r}: {label} has no size; give it with {fix}"
            )
        dims.append(size)
    return dims


def onnxruntime_runtime() -> Runtime:
    """ONNX Runtime's CPU provider."""
    import onnxruntime

    def run(model: onnx.ModelProto, feeds: Feeds) -> list[np.ndarray]:
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return list(session.run(None, feeds))

    return f"onnxruntime {onnxruntime.__version__}", run


def reference_evaluator_runtime() -> Runtime:
    """ONNX's reference evaluator (NumPy)."""
    from onnx.reference import ReferenceEvaluator

    def run(model: onnx.ModelProto, feeds: Feeds) -> list[np.ndarray]:
        return list(ReferenceEvaluator(model).run(None, feeds))

    return f"onnx.reference {onnx.__version__}", run


def reference_outputs(model: onnx.ModelProto, feeds: Feeds) -> tuple[str, list[np.ndarray]]:
    """The reference model's outputs: on ONNX Runtime if it runs the model, else on ONNX's
    reference evaluator (ONNX Runtime has DeformConv only from 1.25)."""
    name, run = onnxruntime_runtime()
    try:
        return name, run(model, feeds)
    except Exception as error:  # ONNX Runtime's NOT_IMPLEMENTED and friends
        if "DeformConv" not in str(error):
            raise
    name, run = reference_evaluator_runtime()
    return name, run(model, feeds)


def compare(
    candidate: onnx.ModelProto, feeds: Feeds, expected: list[np.ndarray], runtimes: list[Runtime]
) -> list[Comparison]:
    """Run ``candidate`` on each runtime; the max absolute difference of each output.

    A runtime that fails gives a row with ``error=None`` and its message as the note. The
    reference evaluator is skipped above :data:`REFERENCE_EVALUATOR_MAX_ELEMENTS` input elements.
    """
    names = [o.name for o in candidate.graph.output]
    size = sum(a.size for a in feeds.values())
    rows: list[Comparison] = []
    for runtime, run in runtimes:
        if runtime.startswith("onnx.reference") and size > REFERENCE_EVALUATOR_MAX_ELEMENTS:
            note = f"skipped: inputs of {size} elements, more than {REFERENCE_EVALUATOR_MAX_ELEMENTS}"
            rows.append(Comparison(runtime, "*", None, note))
            continue
        try:
            outputs = run(candidate, feeds)
        except Exception as error:  # any runtime failure is a result to report, not a crash
            rows.append(Comparison(runtime, "*", None, _first_line(error)))
            continue
        for name, got, want in zip(names, outputs, expected):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            rows.append(Comparison(runtime, name, float(diff.max()) if diff.size else 0.0))
    return rows


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"

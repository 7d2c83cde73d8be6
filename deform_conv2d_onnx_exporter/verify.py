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

#: ONNX's reference evaluator computes a decomposed DeformConv's bilinear samples in Python loops:
#: about 2,800 a second on this project's CPU (measured: 98 s for the 276,480 samples of a
#: 2x4x48x80 input, 3x3 kernel). By default ``verify`` runs it only up to this many samples
#: (seconds), and on request beyond.
REFERENCE_EVALUATOR_SAMPLES_PER_SECOND = 2_800
REFERENCE_EVALUATOR_MAX_SAMPLES = 20_000


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
        DeformConvExportError: dimensions without a size, every one named with the ``--shape``
            to give.
    """
    rng = np.random.default_rng(seed)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    missing = [fix for value in inputs for fix in _missing_sizes(value.name, value.type.tensor_type, shapes)]
    if missing:
        fixes = list(dict.fromkeys(missing))  # each symbolic dimension once, in input order
        raise DeformConvExportError(
            f"--shape: {len(fixes)} symbolic dimension(s) have no size; give them with {' '.join(fixes)}"
        )
    feeds: Feeds = {}
    for value in inputs:
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


def _missing_sizes(name: str, tensor: onnx.TypeProto.Tensor, shapes: ShapeOverrides) -> list[str]:
    """The ``--shape`` arguments input ``name`` still needs: ``--shape DIM=N`` for each named
    symbolic dimension without a size, ``--shape NAME=AxBx...`` for an unnamed one."""
    if isinstance(shapes.get(name), list):
        return []
    fixes = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value") or isinstance(shapes.get(dim.dim_param), int):
            continue
        fixes.append(f"--shape {dim.dim_param}=N" if dim.dim_param else f"--shape {name}=AxBx...")
    return fixes


def _concrete_shape(name: str, tensor: onnx.TypeProto.Tensor, shapes: ShapeOverrides) -> list[int]:
    """The shape of input ``name``, its symbolic dimensions sized by ``shapes`` (all present)."""
    whole = shapes.get(name)
    if isinstance(whole, list):
        return whole
    sizes = [
        dim.dim_value if dim.HasField("dim_value") else shapes[dim.dim_param] for dim in tensor.shape.dim
    ]
    return [size for size in sizes if isinstance(size, int)]


def onnxruntime_runtime() -> Runtime:
    """ONNX Runtime's CPU provider."""
    import onnxruntime

    def run(model: onnx.ModelProto, feeds: Feeds) -> list[np.ndarray]:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return list(session.run(None, feeds))

    return f"onnxruntime {onnxruntime.__version__}", run


def reference_evaluator_runtime() -> Runtime:
    """ONNX's reference evaluator (NumPy)."""
    from onnx.reference import ReferenceEvaluator

    def run(model: onnx.ModelProto, feeds: Feeds) -> list[np.ndarray]:
        return list(ReferenceEvaluator(model).run(None, feeds))

    return f"onnx.reference {onnx.__version__}", run


def reference_outputs(
    model: onnx.ModelProto, feeds: Feeds, progress: Callable[[str], None] = lambda name: None
) -> tuple[str, list[np.ndarray]]:
    """The reference model's outputs: on ONNX Runtime if it runs the model, else on ONNX's
    reference evaluator (ONNX Runtime has DeformConv only from 1.25), announced to ``progress``."""
    name, run = onnxruntime_runtime()
    try:
        return name, run(model, feeds)
    except Exception as error:  # ONNX Runtime's NOT_IMPLEMENTED and friends
        if "DeformConv" not in str(error):
            raise
    name, run = reference_evaluator_runtime()
    progress(name)
    return name, run(model, feeds)


def bilinear_samples(model: onnx.ModelProto, feeds: Feeds) -> Optional[int]:
    """B · C · kh · kw · oh · ow summed over the main graph's DeformConv nodes, at the input shapes
    of ``feeds``: the work of a decomposition on ONNX's reference evaluator. None when shape
    inference cannot tell."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in feeds:
            for dim, size in zip(value.type.tensor_type.shape.dim, feeds[value.name].shape):
                dim.Clear()
                dim.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed)
    except Exception:  # an invalid or unusual model: no estimate rather than no verify
        return None
    graph = inferred.graph
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*graph.input, *graph.value_info, *graph.output)
    }
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    total = 0
    for node in (n for n in graph.node if n.op_type == "DeformConv"):
        x, w, y = (shapes.get(name) or [None] for name in (node.input[0], node.input[1], node.output[0]))
        dims = [d for d in (*x[:2], *w[2:4], *y[2:4]) if d is not None]
        if len(dims) != 6:
            return None
        total += int(np.prod(dims))
    return total


def compare(
    candidate: onnx.ModelProto,
    feeds: Feeds,
    expected: list[np.ndarray],
    runtimes: list[Runtime],
    progress: Callable[[str], None] = lambda name: None,
) -> list[Comparison]:
    """Run ``candidate`` on each runtime, announced to ``progress``; the max absolute difference
    of each output.

    A runtime that fails gives a row with ``error=None`` and its message as the note.
    """
    names = [o.name for o in candidate.graph.output]
    rows: list[Comparison] = []
    for runtime, run in runtimes:
        progress(runtime)
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

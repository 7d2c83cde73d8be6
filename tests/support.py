"""Building, exporting and running single deform_conv2d calls for the tests.

Every numeric test compares ONNX Runtime (CPU) against torchvision's own kernel on the same inputs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime
import torch
import torchvision

import deform_conv2d_onnx_exporter as dce
from deform_conv2d_onnx_exporter import versions
from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS, GRID_SAMPLE_MIN_OPSET, NATIVE_MIN_OPSET

Pair = tuple[int, int]

#: Tolerances of the comparison with torchvision, per input dtype: (atol, rtol).
TOLERANCE = {
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-10, 1e-10),
    # Our graph samples fp16 inputs in fp32 and rounds the result once; torchvision's fp16
    # kernel rounds at every step. The bound is a few fp16 ulps of the output's magnitude.
    torch.float16: (2e-2, 1e-2),
}

#: Every lowering but "auto", which resolves to one of them.
LOWERINGS = [*DECOMPOSITIONS, "native"]

#: Both exporters; tests/conftest.py deselects the tests of one the installed torch lacks.
EXPORTERS = ["legacy", "dynamo"]

TORCH = versions.installed()
#: ONNX Runtime runs GridSample on float64 from this opset (the auto lowering avoids it below).
FLOAT64_GRID_SAMPLE_OPSET = 20
ORT_HAS_DEFORMCONV = versions.onnxruntime_has_deformconv(onnxruntime.__version__)


def _matmul_broadcasts_over_an_empty_batch() -> bool:
    """ONNX Runtime's MatMul broadcasts (G, M, K) over (0, G, K, N) (1.26 does not, 1.32 does)."""
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b", "y")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "matmul", values[:2], values[2:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the failure is the answer, not something to log
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {"a": np.ones((2, 3, 4), np.float32), "b": np.ones((0, 2, 4, 5), np.float32)}
    try:
        return session.run(None, feeds)[0].shape == (0, 2, 3, 5)
    except Exception:  # noqa: BLE001 - onnxruntime raises its own Fail type
        return False


#: Probed on the installed ONNX Runtime, not looked up by version.
ORT_EMPTY_BATCH_MATMUL = _matmul_broadcasts_over_an_empty_batch()


def missing_path(
    exporter: str,
    lowering: Optional[str] = None,
    opset: Optional[int] = None,
    on_onnxruntime: bool = True,
    dtype: Optional[torch.dtype] = None,
) -> Optional[str]:
    """Why the installed torch and ONNX Runtime cannot run a test of these paths, None if they can.

    ``exporter`` is ``"legacy"``, ``"dynamo"`` or ``"decompose"`` (``decompose_model``, which needs
    no torch exporter). Decided by the package's own version detection
    (``deform_conv2d_onnx_exporter.versions``).
    """
    if exporter == "dynamo" and not TORCH.has_dynamo_translation:
        return (
            f"dynamo: torch {TORCH.version} has no custom_translation_table "
            f"(needs >= {versions.DYNAMO_TRANSLATION_TABLE})"
        )
    if exporter == "legacy" and opset is not None and opset > TORCH.legacy_max_opset:
        return f"legacy opset {opset}: torch {TORCH.version} writes opsets up to {TORCH.legacy_max_opset}"
    if (
        str(lowering).startswith("grid_sample")
        and dtype == torch.float64
        and on_onnxruntime
        and exporter == "legacy"
        and TORCH.legacy_max_opset < FLOAT64_GRID_SAMPLE_OPSET
    ):
        return (
            f"float64 grid_sample on onnxruntime: it has float64 GridSample from opset "
            f"{FLOAT64_GRID_SAMPLE_OPSET}, torch {TORCH.version} writes opsets up to "
            f"{TORCH.legacy_max_opset}"
        )
    if lowering == "native":
        if exporter == "legacy" and TORCH.legacy_max_opset < NATIVE_MIN_OPSET:
            return (
                f"native on legacy: torch {TORCH.version} writes opsets up to "
                f"{TORCH.legacy_max_opset}, DeformConv needs {NATIVE_MIN_OPSET}"
            )
        if on_onnxruntime and not ORT_HAS_DEFORMCONV:
            return (
                f"native on onnxruntime: {onnxruntime.__version__} has no DeformConv "
                f"(needs >= {versions.ONNXRUNTIME_DEFORMCONV})"
            )
    return None


def min_opset(lowering: str, dtype: torch.dtype = torch.float32) -> int:
    """The lowest opset at which ONNX Runtime runs ``lowering`` on ``dtype`` inputs."""
    if lowering.startswith("grid_sample") and dtype == torch.float64:
        return FLOAT64_GRID_SAMPLE_OPSET
    if lowering.startswith("grid_sample"):
        return GRID_SAMPLE_MIN_OPSET
    return NATIVE_MIN_OPSET if lowering == "native" else 12


@dataclass(frozen=True)
class Case:
    """One deform_conv2d configuration. Pairs are (h, w)."""

    in_channels: int = 4
    out_channels: int = 6
    height: int = 7
    width: int = 9
    kernel: Pair = (3, 3)
    stride: Pair = (1, 1)
    padding: Pair = (1, 1)
    dilation: Pair = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True
    batch: int = 1

    def with_(self, **changes: Any) -> Case:
        return dataclasses.replace(self, **changes)

    @property
    def out_size(self) -> Pair:
        return (
            _out(self.height, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
            _out(self.width, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]),
        )

    def __str__(self) -> str:
        base = Case()
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        ]
        return ",".join(changed).replace(" ", "") or "base"


def _out(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


class DeformConvCall(torch.nn.Module):
    """torchvision.ops.deform_conv2d with this case's weight, bias and arguments.

    forward(x (B, C, H, W), offset (B, 2·og·kh·kw, oh, ow)[, mask (B, og·kh·kw, oh, ow)]).
    """

    def __init__(self, case: Case, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        kh, kw = case.kernel
        shape = (case.out_channels, case.in_channels // case.groups, kh, kw)
        self.case = case
        self.weight = torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype))
        bias = torch.randn(case.out_channels, generator=generator).to(dtype)
        self.bias = torch.nn.Parameter(bias) if case.bias else None
        self.eval()

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        c = self.case
        return torchvision.ops.deform_conv2d(
            x, offset, self.weight, self.bias, c.stride, c.padding, c.dilation, mask
        )


def make_inputs(
    case: Case,
    dtype: torch.dtype = torch.float32,
    seed: int = 1,
    batch: Optional[int] = None,
    size: Optional[Pair] = None,
) -> tuple[torch.Tensor, ...]:
    """Random (x, offset[, mask]) for the case.

    Offsets are randn × the kernel's extent, so many samples fall partly or wholly outside the
    image; masks lie in [0, 1.5).
    """
    case = case.with_(
        batch=batch or case.batch, height=(size or (case.height,))[0], width=(size or (0, case.width))[1]
    )
    generator = torch.Generator().manual_seed(seed)
    oh, ow = case.out_size
    taps = case.kernel[0] * case.kernel[1]
    reach = max(case.kernel[0] * case.dilation[0], case.kernel[1] * case.dilation[1])
    x = torch.randn(case.batch, case.in_channels, case.height, case.width, generator=generator)
    offset = torch.randn(case.batch, 2 * case.offset_groups * taps, oh, ow, generator=generator)
    offset = offset * reach
    inputs = [x, offset]
    if case.mask:
        inputs.append(torch.rand(case.batch, case.offset_groups * taps, oh, ow, generator=generator) * 1.5)
    return tuple(t.to(dtype) for t in inputs)


def input_names(case: Case) -> list[str]:
    return ["x", "offset", "mask"] if case.mask else ["x", "offset"]


def export(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    exporter: str,
    lowering: str = "auto",
    names: Optional[list[str]] = None,
    dynamic: Union[bool, Sequence[int]] = False,
    opset: Optional[int] = None,
) -> bytes:
    """Export with our package's `export` and return the model bytes (checked by onnx).

    ``dynamic`` names the axes of every input that are symbolic in the model: True for batch,
    height and width (0, 2, 3). ``opset`` None is the exporter's default, raised to
    :func:`min_opset` where that is lower.
    """
    names = names or [f"input{i}" for i in range(len(inputs))]
    kwargs: dict[str, Any] = {"input_names": names}
    needed = min_opset(lowering, inputs[0].dtype)
    default = TORCH.legacy_default_opset if exporter == "legacy" else TORCH.dynamo_default_opset
    if opset is None and needed > default:
        opset = needed  # the exporter's default opset is lower
    if opset is not None:
        kwargs["opset_version"] = opset
    axes = (0, 2, 3) if dynamic is True else tuple(dynamic or ())
    if axes:
        kwargs.update(_dynamic_kwargs(exporter, names, len(inputs), axes))
        if exporter == "dynamo" and 0 in axes and not TORCH.dynamo_keeps_size_one_dynamic:
            # this torch would fix a dynamic dimension whose example size is 1 (README, "Limits")
            inputs = tuple(torch.cat([t, t]) if t.shape[0] == 1 else t for t in inputs)
    if exporter == "dynamo":
        kwargs["verbose"] = False
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        dce.export(module, inputs, path, dynamo=exporter == "dynamo", lowering=lowering, **kwargs)
        data = onnx.load(path).SerializeToString()  # with any external data inlined
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


def _dynamic_kwargs(exporter: str, names: list[str], count: int, axes: tuple[int, ...]) -> dict[str, Any]:
    """The exporter's arguments that make ``axes`` (0: batch, 2: height, 3: width) of every input symbolic."""
    if exporter == "legacy":
        labels = {0: "batch", 2: "{name}_h", 3: "{name}_w"}
        return {
            "dynamic_axes": {name: {axis: labels[axis].format(name=name) for axis in axes} for name in names}
        }
    # By position: torch 2.6 reads a dict's keys as input_names, torch 2.9 as forward's parameters.
    # A bound: torch 2.6 fails the guard "batch != 2**63 - 1" of some models without one.
    batch = torch.export.Dim("batch", max=1024)
    dims = {axis: batch if axis == 0 else torch.export.Dim.AUTO for axis in axes}
    return {"dynamic_shapes": tuple(dims for _ in range(count))}


def run(model: bytes, names: list[str], inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    """Run on ONNX Runtime's CPU provider.

    The inputs are fed by position: the dynamo exporter of torch < 2.9 ignores ``input_names``.
    """
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in session.get_inputs()]
    if TORCH.dynamo_by_default:
        assert graph_inputs == list(names[: len(graph_inputs)]), (graph_inputs, names)
    (out,) = session.run(None, {n: t.numpy() for n, t in zip(graph_inputs, inputs)})
    return out


def assert_matches(
    got: np.ndarray, expected: torch.Tensor, dtype: torch.dtype, against: str = "torchvision's"
) -> None:
    """``got`` equals ``expected`` (the output of ``against``) within :data:`TOLERANCE` of ``dtype``."""
    atol, rtol = TOLERANCE[dtype]
    want = expected.detach().numpy()
    assert got.dtype == want.dtype, f"dtype {got.dtype} != {against} {want.dtype}"
    assert got.shape == want.shape, f"shape {got.shape} != {against} {want.shape}"
    scale = max(1.0, float(np.abs(want).max(initial=0.0))) if dtype == torch.float16 else 1.0
    np.testing.assert_allclose(got, want, atol=atol * scale, rtol=rtol, err_msg=f"against {against} output")

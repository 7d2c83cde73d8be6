"""Adapter 2: the core emitted by a trace-only ONNXScript function, for the dynamo exporter.

The function goes into ``torch.onnx.export(..., dynamo=True, custom_translation_table={
torch.ops.torchvision.deform_conv2d.default: create_deform_conv2d_custom_op()})`` (torch >= 2.6).
The exporter calls it while tracing, with ``onnxscript.ir.Value`` inputs (the package onnx-ir's
``Value`` from onnxscript 0.3 on) that carry shapes (symbolic where dynamic) and dtypes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import versions
from .decomposition import emit_call
from .emitter import Attribute, Emitter
from .lowering import LoweringOptions
from .params import DeformConvExportError
from .schema import DeformConv2dCall, with_schema_signature

#: The opset of the operators this adapter writes. The exporter converts the model to its
#: target opset (18 on torch 2.6 - 2.8, 20 from torch 2.9) afterwards.
OPSET = 18


def _onnxscript() -> Any:
    try:
        import onnxscript
        from onnxscript import ir
    except ImportError as error:
        raise DeformConvExportError(
            "onnxscript: the dynamo exporter path needs the package onnxscript "
            f"(pip install '{versions.TORCH_EXTRA}'), got ImportError: {error}"
        ) from error
    return onnxscript, ir


class OnnxScriptEmitter(Emitter[Any]):
    """Emits through onnxscript's opset while the dynamo exporter traces the function."""

    path = "dynamo"

    def __init__(self, opset: int = OPSET) -> None:
        onnxscript, self._ir = _onnxscript()
        super().__init__(opset)
        self._ops = onnxscript.values.Opset("", opset)

    def _node(self, op_type: str, inputs: Sequence[Any], attributes: dict[str, Attribute], name: str) -> Any:
        # the exporter names the nodes it records (onnxscript 0.2 refuses two equal names)
        return getattr(self._ops, op_type)(*inputs, **attributes)

    def _constant(self, array: np.ndarray) -> Any:
        return self._ops.Constant(value=self._ir.tensor(array))

    def record_shape(self, value: Any, dims: Sequence[Optional[int]]) -> None:
        # Without it the exporter records a reshape's result by its rank alone, and onnxslim
        # removes a Reshape whose input and output shapes it then reads as equal. onnxscript
        # before 0.3 (its own ir, not onnx_ir) fails to serialise a shape set on a traced value.
        if self._ir.Shape.__module__.startswith("onnx_ir"):
            value.shape = self._ir.Shape(list(dims))

    def static_shape(self, value: Any) -> Optional[Sequence[Optional[int]]]:
        if value.shape is None:
            return None
        return [d if isinstance(d, int) else None for d in value.shape]

    def elem_type(self, value: Any) -> Optional[int]:
        return None if value.dtype is None else int(value.dtype)


def create_deform_conv2d_custom_op(
    use_gathernd: Optional[bool] = None,
    enable_openvino_patch: bool = False,
    lowering: str = "auto",
) -> Callable[..., Any]:
    """The translation of ``torchvision::deform_conv2d`` for the dynamo exporter.

    Has no side effects: it returns a new function and registers nothing.

    Args:
        use_gathernd: the 1.x switch: True for the ``gathernd`` lowering, False for
            ``gatherelements``; None (default) leaves the choice to ``lowering``.
        enable_openvino_patch: accepted for 1.x compatibility; changes nothing, as every
            shape in the graph is explicit (what the 1.x patch did after GatherND).
        lowering: ``"auto"`` (default: ``gather_rows``, whose positions are integers and so
            exact after an fp16 conversion), ``"grid_sample"``, ``"grid_sample_ncnn"``, ``"gather_rows"``,
            ``"gathernd"``, ``"gatherelements"``, or ``"native"`` (ONNX DeformConv, opset >= 19, for runtimes
            that have it). See README, "Lowerings".

    Returns:
        A function to put in ``custom_translation_table`` under
        ``torch.ops.torchvision.deform_conv2d.default``.

    Example::

        >>> op = create_deform_conv2d_custom_op()
        >>> torch.onnx.export(model, (x,), "model.onnx", dynamo=True,
        ...     custom_translation_table={torch.ops.torchvision.deform_conv2d.default: op})
    """
    return translation_function(LoweringOptions.from_api(use_gathernd, enable_openvino_patch, lowering))


def translation_function(options: LoweringOptions) -> Callable[..., Any]:
    """The function for ``custom_translation_table``, for already-resolved options."""
    _onnxscript()
    # DeformConv exists from opset 19; the decompositions use opset-18 operators.
    opset = max(OPSET, options.min_opset())

    def deform_conv2d_translation(*args: Any, **kwargs: Any) -> Any:
        call = _static_group_counts(DeformConv2dCall.bind(*args, **kwargs))
        return emit_call(OnnxScriptEmitter(opset), options, call)

    # The exporter derives the ONNX signature from the function's: the annotated ints and bools
    # become attributes, the unannotated tensors inputs of any type.
    return with_schema_signature(deform_conv2d_translation)


def _static_group_counts(call: DeformConv2dCall[Any]) -> DeformConv2dCall[Any]:
    """``call`` with ``groups`` and ``offset_groups`` as ints where the static shapes determine them.

    torchvision computes them from channel counts: ``groups = input.shape[1] // weight.shape[1]``
    and ``offset_groups = offset.shape[1] // (2 * kh * kw)``. When the dynamo exporter traced a
    channel count as an expression of the dynamic sizes (a reshape with -1 over the height and
    width), it hands over that expression, a symbolic scalar, instead of the int.

    Raises:
        DeformConvExportError: a count that stays symbolic, with the channel count it came from
            and the ``dynamic_shapes`` that make it static.
    """
    input_shape, weight_shape, offset_shape = (_dims(v) for v in (call.input, call.weight, call.offset))
    groups, offset_groups = call.constants["groups"], call.constants["offset_groups"]
    if not isinstance(offset_groups, int) and weight_shape[2:] and offset_shape[1:2]:
        kh, kw, channels = weight_shape[2], weight_shape[3], offset_shape[1]
        if isinstance(kh, int) and isinstance(kw, int) and isinstance(channels, int):
            offset_groups = channels // (2 * kh * kw)
    if not isinstance(groups, int) and weight_shape[1:2] and input_shape[1:2]:
        channels, group_channels = input_shape[1], weight_shape[1]
        if isinstance(channels, int) and isinstance(group_channels, int):
            groups = channels // group_channels
    for name, count, channels, formula in (
        ("groups", groups, input_shape[1:2], "input.shape[1] // weight.shape[1]"),
        ("offset_groups", offset_groups, offset_shape[1:2], "offset.shape[1] // (2 * kh * kw)"),
    ):
        if not isinstance(count, int):
            raise DeformConvExportError(
                f"{name}: expected an int, got a symbolic value ({formula}, with channels "
                f"{channels[0] if channels else 'of unknown count'}): the dynamo exporter traced a "
                f"channel count as an expression of the dynamic sizes, as after a reshape with -1 "
                f"over height and width (x.view(b, -1, h // 4, w // 4)). Declare those sizes as "
                f"multiples in dynamic_shapes (for example {{2: 4 * Dim('hq'), 3: 4 * Dim('wq')}} "
                f"with torch.export.Dim) so that the channel count is a number, or use dynamo=False"
            )
    constants = {**call.constants, "groups": groups, "offset_groups": offset_groups}
    return dataclasses.replace(call, constants=constants)


def _dims(value: Any) -> list[Any]:
    """The dimensions of an exporter value: ints, or the expressions (str) of symbolic ones."""
    if value is None or getattr(value, "shape", None) is None:
        return []
    return [d if isinstance(d, int) else str(getattr(d, "value", d)) for d in value.shape]

"""Adapter 2: the core emitted by a trace-only ONNXScript function, for the dynamo exporter.

The function goes into ``torch.onnx.export(..., dynamo=True, custom_translation_table={
torch.ops.torchvision.deform_conv2d.default: create_deform_conv2d_custom_op()})`` (torch >= 2.6).
The exporter calls it while tracing, with ``onnxscript.ir.Value`` inputs (the package onnx-ir's
``Value`` from onnxscript 0.3 on) that carry shapes (symbolic where dynamic) and dtypes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import decomposition
from .decomposition import NATIVE_MIN_OPSET, LoweringOptions
from .emitter import Attribute, Emitter
from .params import DeformConvExportError

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
            f"(pip install onnxscript), got ImportError: {error}"
        ) from error
    return onnxscript, ir


class OnnxScriptEmitter(Emitter[Any]):
    """Emits through onnxscript's opset while the dynamo exporter traces the function."""

    def __init__(self, opset: int = OPSET) -> None:
        onnxscript, self._ir = _onnxscript()
        self.opset = opset
        self._ops = onnxscript.values.Opset("", opset)

    def op(self, op_type: str, *inputs: Any, **attributes: Attribute) -> Any:
        return getattr(self._ops, op_type)(*inputs, **attributes)

    def constant(self, array: np.ndarray) -> Any:
        # np.ascontiguousarray would turn a scalar into shape (1,); Range needs true scalars
        return self._ops.Constant(value=self._ir.tensor(np.array(array, order="C")))

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
        lowering: ``"auto"`` (default: ``grid_sample`` for float32 and float16 at opset >= 16,
            else ``gather_rows``), ``"grid_sample"``, ``"gather_rows"``, ``"gathernd"``,
            ``"gatherelements"``, or ``"native"`` (ONNX DeformConv, opset >= 19, for runtimes
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
    opset = NATIVE_MIN_OPSET if options.lowering == "native" else OPSET

    # The exporter derives the ONNX signature from the annotations: the int and bool ones
    # become attributes, and the unannotated tensors become inputs of any type.
    def torchvision_deform_conv2d(
        input,  # noqa: ANN001
        weight,  # noqa: ANN001
        offset,  # noqa: ANN001
        mask,  # noqa: ANN001
        bias,  # noqa: ANN001
        stride_h: int,
        stride_w: int,
        pad_h: int,
        pad_w: int,
        dilation_h: int,
        dilation_w: int,
        groups: int,
        offset_groups: int,
        use_mask: bool,
    ) -> Any:
        """torchvision::deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, int offset_groups, bool use_mask) -> Tensor"""  # noqa: E501
        e = OnnxScriptEmitter(opset)
        return decomposition.torchvision_deform_conv2d(
            e, options, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
            dilation_h, dilation_w, groups, offset_groups, use_mask,
        )

    return torchvision_deform_conv2d

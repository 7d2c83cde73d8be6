"""Adapter 1: the core emitted through a TorchScript symbolic, for the legacy exporter.

Used by ``torch.onnx.export(..., dynamo=False)`` once :func:`register_deform_conv2d_onnx_op`
has registered the symbolic for ``torchvision::deform_conv2d``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from onnx import TensorProto

from . import _torch_compat, schema, versions
from ._torch_compat import Value
from .decomposition import emit_call
from .emitter import Attribute, Emitter
from .lowering import LoweringOptions
from .params import DeformConvExportError
from .schema import DeformConv2dCall

OP_NAME = "torchvision::deform_conv2d"
#: The symbolic is registered from torch's lowest opset, so that an export below the
#: decomposition's minimum reaches it and gets our error message rather than a generic one.
_REGISTERED_FROM_OPSET = 7

_SCALAR_TYPES = {
    "Float": TensorProto.FLOAT,
    "Double": TensorProto.DOUBLE,
    "Half": TensorProto.FLOAT16,
    "BFloat16": TensorProto.BFLOAT16,
    "Int": TensorProto.INT32,
    "Long": TensorProto.INT64,
    "Short": TensorProto.INT16,
    "Char": TensorProto.INT8,
    "Byte": TensorProto.UINT8,
    "Bool": TensorProto.BOOL,
}


class DeformConvWarning(UserWarning):
    """A call that works, but not quite as asked: an ``export`` that fell back to the legacy
    exporter, or a registration that the default exporter of the installed torch cannot see."""


class TorchScriptEmitter(Emitter[Value]):
    """Emits into the legacy exporter's graph through its ``GraphContext``."""

    path = "legacy"

    def __init__(self, g: Any) -> None:
        super().__init__(_torch_compat.graph_opset(g))
        self._g = g

    def _node(
        self, op_type: str, inputs: Sequence[Value], attributes: dict[str, Attribute], name: str
    ) -> Value:
        # the exporter names nodes after the module scope; the hint has no place here
        return self._g.op(op_type, *inputs, **{_suffixed(k, v): v for k, v in attributes.items()})

    def _constant(self, array: np.ndarray) -> Value:
        return self._g.op("Constant", value_t=torch.from_numpy(array))

    def static_shape(self, value: Value) -> Optional[Sequence[Optional[int]]]:
        return _torch_compat.static_sizes(value)

    def elem_type(self, value: Value) -> Optional[int]:
        scalar_type = _torch_compat.scalar_type_name(value)
        return None if scalar_type is None else _SCALAR_TYPES.get(scalar_type)


def _suffixed(name: str, value: Attribute) -> str:
    """TorchScript's ``g.op`` names an attribute's type by a suffix: ``axis_i``, ``mode_s``, ..."""
    if isinstance(value, str):
        return f"{name}_s"
    if isinstance(value, float):
        return f"{name}_f"
    return f"{name}_i"


def make_symbolic(options: LoweringOptions) -> Callable[..., Value]:
    """The symbolic function for ``torchvision::deform_conv2d`` with fixed lowering options."""

    def symbolic(g: Any, *args: Any, **kwargs: Any) -> Value:
        return emit_call(TorchScriptEmitter(g), options, DeformConv2dCall.bind(*args, **kwargs))

    return _torch_compat.parse_args(*schema.PARSE_ARGS)(schema.with_schema_signature(symbolic, "g"))


#: The options of our current registration, None when not registered.
_registered: Optional[LoweringOptions] = None


def register_deform_conv2d_onnx_op(
    use_gathernd: Optional[bool] = None,
    enable_openvino_patch: bool = False,
    lowering: str = "auto",
) -> None:
    """Make ``torch.onnx.export`` write deform_conv2d as standard operators, on either exporter.

    After this, ``torch.onnx.export(model, args, f, opset_version=12 or higher)`` translates
    ``torchvision::deform_conv2d`` with the decomposition: the legacy exporter through a
    registered symbolic, and the dynamo exporter (torch >= 2.6, the default from torch 2.9) as if
    the translation were in its ``custom_translation_table``. A ``custom_translation_table`` entry
    for deform_conv2d given to ``torch.onnx.export`` still wins. Registering again replaces the
    previous options.

    Args:
        use_gathernd, enable_openvino_patch, lowering: how deform_conv2d is written, as for
            :func:`create_deform_conv2d_custom_op` (README, "Options").

    Raises:
        DeformConvExportError: contradictory options, or ``lowering="native"`` on a torch whose
            legacy exporter cannot write opset 19 (torch < 2.2).

    Warns:
        DeformConvWarning: the installed torch's default exporter is the dynamo exporter, and its
            table of translations is not one this package can extend (a torch newer than the
            releases ``_torch_compat`` covers), so a plain ``torch.onnx.export`` would still write
            ONNX DeformConv.
    """
    options = LoweringOptions.from_api(use_gathernd, enable_openvino_patch, lowering)
    capabilities = versions.installed()
    check_legacy_lowering(options, capabilities)
    register(options)
    if capabilities.has_dynamo_translation and _dynamo_default(options):
        return
    if capabilities.dynamo_by_default:
        warnings.warn(
            f"deform_conv2d was registered for the legacy exporter only: torch "
            f"{torch.__version__} defaults to torch.onnx.export(dynamo=True), whose translations "
            f"this package cannot extend on this release, so that export writes ONNX DeformConv "
            f"(opset >= 19). Pass dynamo=False to torch.onnx.export, or call "
            f"deform_conv2d_onnx_exporter.export(...).",
            DeformConvWarning,
            stacklevel=2,
        )


def _dynamo_default(options: Optional[LoweringOptions]) -> bool:
    """Set (or for None remove) our translation as the dynamo exporter's default.

    Returns False where that cannot be done: no registry to extend in the installed torch, or no
    onnxscript (then the dynamo exporter cannot run at all).
    """
    if options is None:
        return _torch_compat.set_dynamo_default_translation(OP_NAME, None)
    try:
        from .onnxscript_adapter import translation_function

        translation_function(options)
    except DeformConvExportError:
        return False

    def translation_for_opset(opset: int) -> Callable[..., Any]:
        # The dynamo exporter translates at opset 18 or higher and converts down afterwards.
        options.check_opset(opset)
        return translation_function(options)

    return _torch_compat.set_dynamo_default_translation(OP_NAME, translation_for_opset)


def check_legacy_lowering(options: LoweringOptions, torch_capabilities: versions.TorchCapabilities) -> None:
    """Refuse a lowering the legacy exporter of this torch can never write.

    Raises:
        DeformConvExportError: a lowering that needs a higher opset than the legacy exporter's
            highest (``native``, opset 19, on torch < 2.2).
    """
    highest, needed = torch_capabilities.legacy_max_opset, options.min_opset()
    if highest < needed:
        raise DeformConvExportError(
            f"lowering: {options.lowering!r} needs opset >= {needed}, and the legacy exporter of torch "
            f"{torch_capabilities.version} writes opsets up to {highest}; choose another lowering "
            f"or a newer torch"
        )


def unregister_deform_conv2d_onnx_op() -> None:
    """Remove the registration from both exporters; harmless when nothing is registered."""
    register(None)
    if versions.installed().has_dynamo_translation:
        _dynamo_default(None)


def register(options: Optional[LoweringOptions]) -> None:
    """Register the legacy exporter's symbolic with ``options``, or unregister it for None.

    Only the legacy exporter: :func:`export` registers for the duration of one legacy export.
    """
    global _registered
    if options is None:
        if _registered is not None:
            torch.onnx.unregister_custom_op_symbolic(OP_NAME, _REGISTERED_FROM_OPSET)
            _registered = None
        return
    torch.onnx.register_custom_op_symbolic(OP_NAME, make_symbolic(options), _REGISTERED_FROM_OPSET)
    _registered = options


def registered_options() -> Optional[LoweringOptions]:
    """The options of the current registration, None when not registered."""
    return _registered

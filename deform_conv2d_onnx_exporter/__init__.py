"""Export torchvision's deformable convolution (DCNv1/DCNv2) to ONNX as standard operators.

See README.md for usage. The public API:

- :func:`register_deform_conv2d_onnx_op` / :func:`unregister_deform_conv2d_onnx_op`: the legacy
  exporter (``torch.onnx.export(..., dynamo=False)``);
- :func:`create_deform_conv2d_custom_op`: the dynamo exporter's ``custom_translation_table``;
- :func:`export`: either, chosen by the installed torch;
- :func:`decompose_model`: rewrite the deformable convolutions of an existing ONNX model (ONNX
  DeformConv, or mmcv's, mmdeploy's and OpenVINO's operators; no torch needed);
- :func:`sampling_nodes`: the nodes to keep in float when quantizing such a model (no torch needed).

The torch entry points are imported on first use, so that rewriting ONNX files works without torch
(a plain ``pip install deform_conv2d_onnx_exporter``; the exporters need the extra ``[torch]``).
"""

# Imports under private names (and no ``from __future__``): the namespace holds the public API only.
import importlib as _importlib
import typing as _typing

from .params import DeformConvExportError
from .rewrite import Decomposed, decompose_model
from .sampling import sampling_nodes
from .versions import missing_extra_message as _missing_extra_message

if _typing.TYPE_CHECKING:
    from .exporting import export
    from .onnxscript_adapter import create_deform_conv2d_custom_op
    from .torchscript_adapter import (
        DeformConvWarning,
        register_deform_conv2d_onnx_op,
        unregister_deform_conv2d_onnx_op,
    )

#: The names that need torch, and the module each comes from.
_NEEDS_TORCH = {
    "export": ".exporting",
    "create_deform_conv2d_custom_op": ".onnxscript_adapter",
    "DeformConvWarning": ".torchscript_adapter",
    "register_deform_conv2d_onnx_op": ".torchscript_adapter",
    "unregister_deform_conv2d_onnx_op": ".torchscript_adapter",
}

__version__ = "2.0.0"

__all__ = [
    "Decomposed",
    "DeformConvExportError",
    "DeformConvWarning",
    "create_deform_conv2d_custom_op",
    "decompose_model",
    "export",
    "register_deform_conv2d_onnx_op",
    "sampling_nodes",
    "unregister_deform_conv2d_onnx_op",
]


def __getattr__(name: str) -> _typing.Any:
    if name not in _NEEDS_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = _importlib.import_module(_NEEDS_TORCH[name], __name__)
    except ModuleNotFoundError as error:
        message = _missing_extra_message(f"{__name__}.{name}", error)
        if message is None:
            raise
        raise ModuleNotFoundError(message, name=error.name) from None
    return getattr(module, name)


def __dir__() -> list[str]:
    # The public API, including the names that need torch and are imported on first use.
    return sorted([*__all__, "__version__"])

"""Export torchvision's deformable convolution (DCNv1/DCNv2) to ONNX as standard operators.

See README.md for usage. The public API:

- :func:`register_deform_conv2d_onnx_op` / :func:`unregister_deform_conv2d_onnx_op`: the legacy
  exporter (``torch.onnx.export(..., dynamo=False)``);
- :func:`create_deform_conv2d_custom_op`: the dynamo exporter's ``custom_translation_table``;
- :func:`export`: either, chosen by the installed torch.
"""

from .exporting import export
from .onnxscript_adapter import create_deform_conv2d_custom_op
from .params import DeformConvExportError
from .torchscript_adapter import (
    DeformConvWarning,
    register_deform_conv2d_onnx_op,
    unregister_deform_conv2d_onnx_op,
)

__version__ = "2.0.0"

__all__ = [
    "DeformConvExportError",
    "DeformConvWarning",
    "create_deform_conv2d_custom_op",
    "export",
    "register_deform_conv2d_onnx_op",
    "unregister_deform_conv2d_onnx_op",
]

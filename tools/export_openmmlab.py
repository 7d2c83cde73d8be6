"""Write tests/data: small DCN models exported by mmcv's and mmdeploy's own symbolic functions.

Each model is one layer (4 -> 6 channels, 3x3 kernel, on a 1x4x7x9 input) exported with
``torch.onnx.export(dynamo=False, opset_version=11)``, as those packages export; beside it an
``.npz`` holds its inputs (by graph input name) and the layer's output (``expected``).

mmcv 2.2.0 has no wheel for this torch and its compiled ops do not build here, so this runs with
``mmcv-lite`` 2.2.0 (the same Python code without the compiled ``_ext``) and mmdeploy 1.3.1: a stub
stands in for ``_ext``, and the layers' forward is torchvision's kernel, which the export traces;
the node written is the packages' own symbolic function's. In a throwaway environment that also
sees torch and torchvision::

    pip install --no-deps mmcv-lite==2.2.0 mmengine==0.10.7 mmdeploy==1.3.1 addict yapf termcolor \\
        opencv-python-headless pyyaml rich pygments markdown-it-py mdurl platformdirs multiprocess \\
        dill prettytable wcwidth aenum
    python tools/export_openmmlab.py tests/data
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torchvision


def _stub_compiled_ops() -> None:
    """mmcv.ops loads its compiled kernels by name at import: any name gives a function."""

    def kernel(name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None

    ext = types.ModuleType("mmcv._ext")
    ext.__getattr__ = kernel  # type: ignore[method-assign]
    sys.modules["mmcv._ext"] = ext


def _torchvision_forwards() -> tuple[Any, Any]:
    """mmcv's DeformConv2d and ModulatedDeformConv2d, their forward computed by torchvision."""
    from mmcv.ops.deform_conv import DeformConv2d, DeformConv2dFunction
    from mmcv.ops.modulated_deform_conv import ModulatedDeformConv2d, ModulatedDeformConv2dFunction

    def dcn(
        ctx: Any,
        x: Any,
        offset: Any,
        weight: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = False,
        im2col_step: int = 32,
    ) -> Any:
        return torchvision.ops.deform_conv2d(
            x, offset, weight, stride=stride, padding=padding, dilation=dilation
        )

    def mdcn(
        ctx: Any,
        x: Any,
        offset: Any,
        mask: Any,
        weight: Any,
        bias: Any = None,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        deform_groups: int = 1,
    ) -> Any:
        return torchvision.ops.deform_conv2d(
            x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
        )

    DeformConv2dFunction.forward = staticmethod(dcn)
    ModulatedDeformConv2dFunction.forward = staticmethod(mdcn)
    return DeformConv2d, ModulatedDeformConv2d


def main(folder: str) -> None:
    _stub_compiled_ops()
    deform_conv2d, modulated_deform_conv2d = _torchvision_forwards()
    from mmdeploy.core import RewriterContext

    torch.manual_seed(0)
    x = torch.randn(1, 4, 7, 9)
    # padding (1, 2): mmdeploy writes it (1, 1, 2, 2), which its own kernels read as (1, 1)
    dcn = deform_conv2d(4, 6, 3, stride=1, padding=(1, 2), deform_groups=2)
    mdcn = modulated_deform_conv2d(4, 6, 3, stride=(2, 1), padding=1)
    dcn_args = (x, torch.randn(1, 36, 7, 11))
    mdcn_args = (x, torch.randn(1, 18, 4, 9), torch.rand(1, 9, 4, 9))
    warnings.simplefilter("ignore")  # the exporters' deprecation chatter
    exports = [
        ("mmcv_dcn", None, dcn, dcn_args),
        ("mmcv_mdcn", None, mdcn, mdcn_args),
        ("mmdeploy_dcn", "default", dcn, dcn_args),
        ("mmdeploy_mdcn", "default", mdcn, mdcn_args),
        ("mmdeploy_openvino_dcn", "openvino", dcn, dcn_args),
    ]
    for name, backend, module, args in exports:
        path = os.path.join(folder, f"{name}.onnx")
        with torch.no_grad():
            if backend is None:
                torch.onnx.export(
                    module, args, path, dynamo=False, opset_version=11, custom_opsets={"mmcv": 1}
                )
            else:
                with RewriterContext(cfg={}, backend=backend, opset=11):
                    torch.onnx.export(module, args, path, dynamo=False, opset_version=11)
            expected = module(*args).numpy()
        names = [value.name for value in onnx.load(path).graph.input]
        arrays = {n: a.numpy() for n, a in zip(names, args)}
        np.savez(os.path.join(folder, f"{name}.npz"), expected=expected, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])

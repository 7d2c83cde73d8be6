"""A small DCNv2 backbone, exported both ways and checked on ONNX Runtime against torchvision.

Run with ``python -m deform_conv2d_onnx_exporter demo``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional, TypeVar

import numpy as np
import torch
from torch import nn
from torchvision.ops import DeformConv2d

from . import versions
from .exporting import export


class DCNv2Block(nn.Module):
    """conv → (offset, mask) → DeformConv2d → BatchNorm → ReLU.

    A plain convolution predicts the offsets (B, 2·og·kh·kw, oh, ow) and the mask logits
    (B, og·kh·kw, oh, ow) from the block's input, as in DCNv2.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        offset_groups: int = 1,
        groups: int = 1,
        offset_scale: float = 1.0,
    ) -> None:
        super().__init__()
        taps = kernel_size * kernel_size
        padding = kernel_size // 2
        self.offset_groups = offset_groups
        self.offset_scale = offset_scale
        self.offset_and_mask = nn.Conv2d(in_channels, 3 * offset_groups * taps, kernel_size, stride, padding)
        self.deform = DeformConv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, Cout, H / stride, W / stride)."""
        predicted = self.offset_and_mask(x)
        split = 2 * self.deform.weight.shape[2] * self.deform.weight.shape[3] * self.offset_groups
        offset = predicted[:, :split] * self.offset_scale
        mask = torch.sigmoid(predicted[:, split:])
        return self.act(self.norm(self.deform(x, offset, mask)))


class DCNv2Backbone(nn.Module):
    """A stem and three DCNv2 stages, two of them with stride 2."""

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.stages = nn.Sequential(
            DCNv2Block(width, width * 2, stride=2, offset_scale=4.0),
            DCNv2Block(width * 2, width * 2, offset_groups=2, groups=2, offset_scale=2.0),
            DCNv2Block(width * 2, width * 4, kernel_size=5, stride=2, offset_groups=4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) -> features (B, 4·width, ⌈H/4⌉, ⌈W/4⌉)."""
        return self.stages(self.stem(x))


def build_demo_model(seed: int = 0) -> DCNv2Backbone:
    """A DCNv2Backbone in eval mode with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    return with_random_statistics(DCNv2Backbone())


M = TypeVar("M", bound=nn.Module)


def with_random_statistics(model: M) -> M:
    """``model`` in eval mode, its BatchNorm running statistics drawn from torch's generator.

    Fresh statistics (mean 0, variance 1) would make every BatchNorm an identity and hide errors.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def max_error_on_ort(path: str, model: nn.Module, x: torch.Tensor) -> float:
    """Run the ONNX file on ONNX Runtime (CPU) and return max |ort - torch| for input x."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (got,) = session.run(None, {name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    if got.shape != expected.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != torch output shape {expected.shape}")
    return float(np.abs(got - expected).max())


def run(exporters: Optional[list[versions.Exporter]] = None) -> dict[str, list[float]]:
    """Export the demo model with each exporter (dynamic batch, H and W) and check it.

    Returns:
        For each exporter, the max error on ORT at the export size and two other sizes.
    """
    capabilities = versions.installed()
    if exporters is None:
        exporters = ["legacy", "dynamo"] if capabilities.has_dynamo_translation else ["legacy"]
    model = build_demo_model()
    x = torch.randn(1, 3, 64, 64)
    errors: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for exporter in exporters:
            path = os.path.join(folder, f"dcn_{exporter}.onnx")
            export(model, (x,), path, dynamo=exporter == "dynamo", **_dynamic(exporter))
            errors[exporter] = [
                max_error_on_ort(path, model, torch.randn(*shape))
                for shape in [(1, 3, 64, 64), (2, 3, 48, 80), (3, 3, 33, 17)]
            ]
    return errors


def _dynamic(exporter: versions.Exporter) -> dict[str, Any]:
    names = {"input_names": ["image"], "output_names": ["features"]}
    if exporter == "legacy":
        return {**names, "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}}}
    dims = {
        0: torch.export.Dim("batch"),
        2: torch.export.Dim("height", min=8),
        3: torch.export.Dim("width", min=8),
    }
    return {**names, "dynamic_shapes": {"x": dims}, "verbose": False}

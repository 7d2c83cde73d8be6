"""The DCN network and the ways the package exports it, for the deployment-tool tests.

The network is small on purpose: every variant goes through a dozen tools, some slow to start.
Each variant is one ONNX file; dynamic variants are checked at their export size and at another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import onnx
import torch
from torch import nn

import deform_conv2d_onnx_exporter as dce
from deform_conv2d_onnx_exporter.demo import DCNv2Block, with_random_statistics

INPUT = "image"
OUTPUT = "features"
CHANNELS = 3
#: (H, W) of the export and, for dynamic variants, the other size they are run at. Not square: at
#: 32x32 the second block's output is (B, 16, 16, 16), whose layout a converter that moves tensors
#: to channels-last (onnx2tf) cannot tell from its shape; a variant of its own checks that size.
EXPORT_SIZE = (32, 48)
OTHER_SIZE = (24, 40)
#: Where half precision shows (README, "Precision"): the tools that compute in half precision run
#: dynamic variants at this (H, W) too.
LARGE_SIZE = (1024, 1024)


class SmallDCN(nn.Module):
    """stem conv -> DCNv2 block -> DCNv2 block (offset groups 2, groups 2) -> 1x1 head.

    x: (B, 3, H, W) -> (B, 8, H/2, W/2).
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(CHANNELS, width, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(
            DCNv2Block(width, width, stride=2, offset_scale=3.0),
            DCNv2Block(width, width * 2, offset_groups=2, groups=2, offset_scale=2.0),
        )
        self.head = nn.Conv2d(width * 2, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build_model() -> SmallDCN:
    """The network in eval mode, with random weights and BatchNorm statistics (seeded)."""
    torch.manual_seed(0)
    return with_random_statistics(SmallDCN())


@dataclass(frozen=True)
class Variant:
    """One way of exporting the network.

    ``decompose``: torch's own dynamo export (native DeformConv) rewritten by ``decompose_model``
    with ``lowering``; ``batch``: the export's batch, static unless ``dynamic``; ``size``: the
    export's (H, W). ``lowering="native"`` writes ONNX DeformConv itself, for the tools that
    have one of their own (``Tool.native``).
    """

    name: str
    exporter: str
    lowering: str = "auto"
    opset: Optional[int] = None
    dynamic: bool = True
    batch: int = 1
    decompose: bool = False
    size: tuple[int, int] = EXPORT_SIZE

    @property
    def native(self) -> bool:
        return self.lowering == "native"

    def sizes(self, large: bool = False) -> list[tuple[int, int, int, int]]:
        """The input shapes (B, C, H, W) to check: the export's, and another one when dynamic
        (and LARGE_SIZE if ``large``)."""
        shapes = [(self.batch, CHANNELS, *self.size)]
        if self.dynamic:
            shapes.append((self.batch + 1, CHANNELS, *OTHER_SIZE))
            if large:
                shapes.append((1, CHANNELS, *LARGE_SIZE))
        return shapes


VARIANTS = [
    Variant("dynamo", "dynamo"),
    Variant("dynamo-gathernd", "dynamo", lowering="gathernd"),
    Variant("dynamo-static-b2", "dynamo", dynamic=False, batch=2),
    Variant("legacy13", "legacy", opset=13),
    Variant("legacy17", "legacy", opset=17),
    Variant("legacy17-static", "legacy", opset=17, dynamic=False),
    Variant("legacy17-static-square", "legacy", opset=17, dynamic=False, size=(32, 32)),
    Variant("gather_rows", "legacy", lowering="gather_rows", opset=17),
    Variant("gather_rows-static-b2", "legacy", lowering="gather_rows", opset=17, dynamic=False, batch=2),
    Variant("gathernd", "legacy", lowering="gathernd", opset=17),
    Variant("gatherelements", "legacy", lowering="gatherelements", opset=17),
    Variant("ncnn", "legacy", lowering="grid_sample_ncnn", opset=17, dynamic=False),
    Variant("dynamo-ncnn", "dynamo", lowering="grid_sample_ncnn"),
    Variant("decomposed", "dynamo", decompose=True),
    Variant(
        "decomposed-gather_rows-static-b2",
        "dynamo",
        lowering="gather_rows",
        dynamic=False,
        batch=2,
        decompose=True,
    ),
    Variant("native", "dynamo", lowering="native"),
    Variant("native-static-b2", "dynamo", lowering="native", dynamic=False, batch=2),
]


def export(variant: Variant, model: nn.Module, path: str) -> None:
    """Write ``variant`` of ``model`` to ``path`` (checked by onnx)."""
    x = torch.randn(variant.batch if not variant.dynamic else 2, CHANNELS, *variant.size)
    kwargs: dict[str, Any] = {"input_names": [INPUT], "output_names": [OUTPUT]}
    if variant.opset is not None:
        kwargs["opset_version"] = variant.opset
    if variant.dynamic and variant.exporter == "legacy":
        kwargs["dynamic_axes"] = {
            INPUT: {0: "batch", 2: "height", 3: "width"},
            OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"},
        }
    elif variant.dynamic:
        kwargs["dynamic_shapes"] = (
            {
                0: torch.export.Dim("batch", max=64),
                2: torch.export.Dim("height", min=8, max=2048),
                3: torch.export.Dim("width", min=8, max=2048),
            },
        )
    if variant.exporter == "dynamo":
        kwargs["verbose"] = False
    if variant.decompose:
        # torch's own exporter writes ONNX DeformConv; the package rewrites the file afterwards
        torch.onnx.export(model, (x,), path, dynamo=True, **kwargs)
        rewritten = dce.decompose_model(onnx.load(path), lowering=variant.lowering).model
        onnx.save(rewritten, path)
    else:
        dce.export(
            model, (x,), path, dynamo=variant.exporter == "dynamo", lowering=variant.lowering, **kwargs
        )
    onnx.save(onnx.load(path), path)  # external data, if any, inlined
    onnx.checker.check_model(path, full_check=True)


def make_input(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """A float32 image batch of ``shape``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def reference(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """torchvision's output (its CPU kernel) for ``x``."""
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| / max |expected|; shapes must agree."""
    if got.shape != expected.shape:
        raise AssertionError(f"output shape {got.shape}, expected {expected.shape}")
    return float(np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max())


def export_all(folder: str) -> dict[str, str]:
    """Every variant of the network written to ``folder``; returns variant name -> path."""
    model = build_model()
    paths = {}
    for variant in VARIANTS:
        paths[variant.name] = os.path.join(folder, f"{variant.name}.onnx")
        export(variant, model, paths[variant.name])
    return paths

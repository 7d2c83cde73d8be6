"""Half-precision pipelines, and the floor they are judged against (README, "Precision").

The model is what users export: a convolution predicts offsets of a few pixels and a mask from the
image, and a 3x3 DCNv2 reads them (8 channels). A *pipeline* is what a deployment does to its
float32 ONNX file: an fp16 converter (onnxconverter-common's or ONNX Runtime's, both with
``keep_io_types=True``) followed by a runtime (ONNX Runtime's CPU provider, or OpenVINO's CPU
plugin computing in f16), or OpenVINO on the float32 file at a half inference precision.

The *floor* is what half precision itself costs: the same network with every tensor rounded to the
pipeline's half type between operators (the DCN counted as one operator) and exact arithmetic
inside each, in float64. OpenVINO runs a model with symbolic sizes without fusing a convolution's
bias into it: the convolution's result is rounded before the bias is added, a rounding of the
network's own that the floor of such a model counts too (``bias_apart``). Errors are
max |out - exact| / max |exact|, ``exact`` the float64 network with no rounding; torchvision's
kernel computes both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import onnx
import torch
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d

CHANNELS = 8
#: Offsets come out of the predictor as N(0, 1) logits times this: a few pixels.
OFFSET_SCALE = 4.0
#: (height, width) of the input images the pipelines are judged at.
SIZES = {
    "64": (64, 64),
    "256": (256, 256),
    "1024": (1024, 1024),
    "32x2048": (32, 2048),
    "2048x32": (2048, 32),
}
#: A pipeline may cost at most this many times the floor.
BOUND = 2.0


class OffsetDCN(nn.Module):
    """conv -> (offset, mask) -> 3x3 DCNv2, all with CHANNELS channels: (1, C, H, W) -> (1, C, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = nn.Conv2d(CHANNELS, 27, 3, padding=1)
        self.deform = DeformConv2d(CHANNELS, CHANNELS, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x, lambda t: t)

    def layers(
        self, x: torch.Tensor, rounded: Callable[[torch.Tensor], torch.Tensor], bias_apart: bool = False
    ) -> torch.Tensor:
        """The network with ``rounded`` applied to every tensor between operators (and every weight);
        with ``bias_apart``, also to the predictor's convolution before its bias is added."""
        x = rounded(x)
        weight, bias = rounded(self.predict.weight), rounded(self.predict.bias)
        if bias_apart:
            convolved = rounded(nn.functional.conv2d(x, weight, padding=1))
            predicted = rounded(convolved + bias[None, :, None, None])
        else:
            predicted = rounded(nn.functional.conv2d(x, weight, bias, padding=1))
        offset = rounded(predicted[:, :18] * OFFSET_SCALE)
        mask = rounded(torch.sigmoid(predicted[:, 18:]))
        weight, bias = rounded(self.deform.weight), rounded(self.deform.bias)
        return rounded(deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask))


def build_model(seed: int = 0) -> OffsetDCN:
    """OffsetDCN in eval mode: predictor weights scaled so that its outputs are about N(0, 1)."""
    torch.manual_seed(seed)
    model = OffsetDCN().eval()
    with torch.no_grad():
        model.predict.weight.normal_(0.0, 1.0 / np.sqrt(CHANNELS * 9))
        model.deform.weight.normal_(0.0, 1.0 / np.sqrt(CHANNELS * 9))
    return model


def make_input(size: str, seed: int = 0) -> np.ndarray:
    """(1, CHANNELS, H, W) float32 for one of SIZES."""
    height, width = SIZES[size]
    return np.random.default_rng(seed).standard_normal((1, CHANNELS, height, width)).astype(np.float32)


#: Round to a half type and back, in float64.
_ROUNDING: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "f32": lambda t: t.float().double(),
    "f16": lambda t: t.half().double(),
    "bf16": lambda t: t.bfloat16().double(),
}


@dataclass(frozen=True)
class Reference:
    """The float64 network's output and the floor of each half type at one input.

    Attributes:
        exact: (1, C, H, W), float64.
        floor: (half type, bias_apart) -> the floor's error.
    """

    exact: np.ndarray
    floor: dict[tuple[str, bool], float]

    def error(self, got: np.ndarray) -> float:
        """max |got - exact| / max |exact|."""
        return float(np.abs(got.astype(np.float64) - self.exact).max() / np.abs(self.exact).max())


@functools.cache
def reference(size: str, seed: int = 0) -> Reference:
    """The exact output and the floors for ``make_input(size, seed)`` through ``build_model(seed)``."""
    model = build_model(seed).double()
    x = torch.from_numpy(make_input(size, seed)).double()
    with torch.no_grad():
        exact = model(x).numpy()
        rounded = {
            (name, apart): model.layers(x, rounding, apart).numpy()
            for name, rounding in _ROUNDING.items()
            for apart in (False, True)
        }
    result = Reference(exact, {})
    return Reference(exact, {key: result.error(out) for key, out in rounded.items()})


# --- pipelines -------------------------------------------------------------------------------------

#: Converts a float32 model: (model, node names kept in float32) -> converted model.
Converter = Callable[[onnx.ModelProto, list[str]], onnx.ModelProto]


def _onnxconverter_common(model: onnx.ModelProto, keep: list[str]) -> onnx.ModelProto:
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep or None)


def _ort_float16(model: onnx.ModelProto, keep: list[str]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, node_block_list=keep or None)


def _on_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _on_openvino(model: onnx.ModelProto, x: np.ndarray, precision: Optional[str]) -> tuple[np.ndarray, str]:
    """OpenVINO's CPU plugin at ``precision`` (None: its default). Returns the output and the
    inference precision the plugin used."""
    import openvino

    core = openvino.Core()
    ov_model = core.read_model(model.SerializeToString(), b"")
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    compiled = core.compile_model(ov_model, "CPU", config)
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return compiled({0: x})[compiled.output(0)], _TYPE_NAMES.get(used, used)


#: OpenVINO's names of its inference precisions, as :data:`_ROUNDING` names them.
_TYPE_NAMES = {"<Type: 'float16'>": "f16", "<Type: 'bfloat16'>": "bf16", "<Type: 'float32'>": "f32"}


@dataclass(frozen=True)
class Pipeline:
    """A converter (or none) and a runtime.

    Attributes:
        name: how README and the test ids name it.
        converter: the fp16 converter applied to the float32 file, or None.
        openvino: None for ONNX Runtime's CPU provider, else OpenVINO's inference precision
            ("f16"; "default" for the plugin's own, bf16 on CPUs with bf16 units).
    """

    name: str
    converter: Optional[Converter]
    openvino: Optional[str]

    def run(self, model: onnx.ModelProto, x: np.ndarray, keep: list[str] = ()) -> tuple[np.ndarray, str]:
        """The output for ``x`` and the half type whose floor judges it.

        Args:
            keep: node names the converter keeps in float32 (its ``node_block_list``).
        """
        keep = list(keep)
        if self.converter is not None:
            model = self.converter(model, keep)
        if self.openvino is None:
            return _on_onnxruntime(model, x), "f16"
        precision = None if self.openvino == "default" else self.openvino
        return _on_openvino(model, x, precision)


PIPELINES = [
    Pipeline("onnxconverter-common fp16, ORT CPU", _onnxconverter_common, None),
    Pipeline("ORT float16 converter, ORT CPU", _ort_float16, None),
    Pipeline("onnxconverter-common fp16, OpenVINO f16", _onnxconverter_common, "f16"),
    Pipeline("ORT float16 converter, OpenVINO f16", _ort_float16, "f16"),
    Pipeline("OpenVINO f16", None, "f16"),
    Pipeline("OpenVINO default precision", None, "default"),
]

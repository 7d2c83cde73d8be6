"""``sampling_nodes`` on models of every path and lowering, and quantization that keeps them in float."""

from __future__ import annotations

import os
import tempfile
from typing import Optional

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from torch import nn

import deform_conv2d_onnx_exporter as dce
from deform_conv2d_onnx_exporter.demo import DCNv2Block
from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

LOWERINGS = DECOMPOSITIONS
SAMPLERS = {"GridSample", "GatherND", "GatherElements"}


class Network(nn.Module):
    """stem conv -> DCNv2 block -> DCNv2 block (offset groups 2, groups 2) -> 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(
            DCNv2Block(8, 8, stride=2, offset_scale=3.0),
            DCNv2Block(8, 16, offset_groups=2, groups=2, offset_scale=2.0),
        )
        self.head = nn.Conv2d(16, 8, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, 8, H/2, W/2)."""
        return self.head(self.blocks(self.stem(x)))


NETWORK = Network()


def _export(path: str, lowering: str) -> onnx.ModelProto:
    """The network with dynamic batch, height and width, written by ``path`` with ``lowering``."""
    x = torch.randn(2, 3, 32, 32)
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, "model.onnx")
        if path == "legacy":
            dce.export(
                NETWORK,
                (x,),
                file,
                dynamo=False,
                opset_version=17,
                lowering=lowering,
                input_names=["image"],
                dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}},
            )
            return onnx.load(file)
        dims = (
            {
                0: torch.export.Dim("b", max=1024),
                2: torch.export.Dim("h", min=8),
                3: torch.export.Dim("w", min=8),
            },
        )
        if path == "dynamo":
            dce.export(
                NETWORK,
                (x,),
                file,
                dynamo=True,
                lowering=lowering,
                input_names=["image"],
                dynamic_shapes=dims,
                verbose=False,
            )
            return onnx.load(file)
        torch.onnx.export(
            NETWORK, (x,), file, dynamo=True, input_names=["image"], dynamic_shapes=dims, verbose=False
        )  # torch's native DeformConv, rewritten below
        return dce.decompose_model(onnx.load(file), lowering=lowering).model


PATHS = ["legacy", "dynamo", "decompose_model"]


@pytest.fixture(scope="module")
def models() -> dict[tuple[str, str], onnx.ModelProto]:
    return {}


def _model(models: dict[tuple[str, str], onnx.ModelProto], path: str, lowering: str) -> onnx.ModelProto:
    if (path, lowering) not in models:
        models[path, lowering] = _export(path, lowering)
    return models[path, lowering]


def _path_marks(path: str) -> list[pytest.MarkDecorator]:
    if path == "decompose_model":  # torch's own DeformConv export, rewritten
        return [pytest.mark.dynamo, pytest.mark.torch_writes_deformconv]
    return [] if path == "legacy" else [pytest.mark.dynamo]


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("path", [pytest.param(p, marks=_path_marks(p)) for p in PATHS])
def test_sampling_nodes_are_the_sampling(
    models: dict[tuple[str, str], onnx.ModelProto], path: str, lowering: str
) -> None:
    """Every sampler and what computes its coordinates; no layer, and nothing the samples do not need."""
    model = _model(models, path, lowering)
    found = set(dce.sampling_nodes(model))
    nodes = {node.name: node for node in model.graph.node}
    assert found <= set(nodes)
    initializers = {tensor.name for tensor in model.graph.initializer}
    samplers = [node for node in model.graph.node if node.op_type in SAMPLERS]
    if lowering == "gather_rows":  # its sampler is a Gather of pixel rows, not of a shape's entries
        producers = {output: node.op_type for node in model.graph.node for output in node.output}
        samplers = [
            node
            for node in model.graph.node
            if node.op_type == "Gather"
            and producers.get(node.input[0]) != "Shape"
            and not _from_initializer(model, node.input[1], initializers)
        ]
    # one per deformable convolution; grid_sample_ncnn has one per offset group (1 and 2 here)
    assert len(samplers) == (3 if lowering == "grid_sample_ncnn" else 2)
    assert {node.name for node in samplers} <= found
    # the layers stay quantizable: convolutions, and each deformable convolution's kernel product
    layers = [node for node in model.graph.node if node.op_type in ("Conv", "BatchNormalization", "Relu")]
    assert layers and not {node.name for node in layers} & found
    kernels = [
        node
        for node in model.graph.node
        if node.op_type == "MatMul"
        and any(_from_initializer(model, name, initializers) for name in node.input)
    ]
    assert len(kernels) == 2 and not {node.name for node in kernels} & found
    # every sampling node's output reaches a sampler's coordinates or the kernel product
    for name in found:
        assert _reaches(model, nodes[name], {node.name for node in samplers + kernels}), name


def _from_initializer(model: onnx.ModelProto, name: str, initializers: set[str]) -> bool:
    """Whether ``name`` is computed from initializers and constants only (a weight, maybe reshaped)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    if name in initializers:
        return True
    node = producers.get(name)
    if node is None:
        return False
    return node.op_type == "Constant" or all(
        _from_initializer(model, name, initializers) for name in node.input if name
    )


def _reaches(model: onnx.ModelProto, start: onnx.NodeProto, targets: set[str]) -> bool:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen: set[str] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if node.name in targets:
            return True
        if node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(c for output in node.output for c in consumers.get(output, []))
    return False


class _Images(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(10)
        images = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
        self.feeds = iter([{"image": image} for image in images])

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        return next(self.feeds, None)


def _quantized_errors(model: onnx.ModelProto, folder: str, **options: object) -> list[float]:
    """QDQ-quantize (calibrated at 32x32), then max |out - torchvision| / max |torchvision| at two sizes."""
    source, target = os.path.join(folder, "model.onnx"), os.path.join(folder, "quantized.onnx")
    onnx.save(model, source)
    quantize_static(source, target, _Images(), quant_format=QuantFormat.QDQ, **options)  # type: ignore[arg-type]
    session = onnxruntime.InferenceSession(target, providers=["CPUExecutionProvider"])
    errors = []
    for shape in [(1, 3, 32, 32), (2, 3, 24, 40)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            expected = NETWORK(torch.from_numpy(x)).numpy()
        got = session.run(None, {"image": x})[0]
        errors.append(float(np.abs(got - expected).max() / np.abs(expected).max()))
    return errors


@pytest.mark.parametrize("lowering", ["grid_sample", "gather_rows"])
@pytest.mark.parametrize("path", [pytest.param(p, marks=_path_marks(p)) for p in PATHS])
def test_quantized_with_sampling_in_float(
    models: dict[tuple[str, str], onnx.ModelProto], path: str, lowering: str, tmp_path: object
) -> None:
    """docs/deploying.md's recipe: at two input sizes, within 1.5x the error of quantizing the convs alone."""
    model = _model(models, path, lowering)
    convs_only = _quantized_errors(model, str(tmp_path), op_types_to_quantize=["Conv"])
    recipe = _quantized_errors(model, str(tmp_path), nodes_to_exclude=dce.sampling_nodes(model))
    assert all(got <= 1.5 * baseline for got, baseline in zip(recipe, convs_only)), (recipe, convs_only)

"""Every lowering, from both exporters and from ``decompose_model``, on onnxruntime-web's WebGPU provider.

Headless Chromium runs WebGPU on SwiftShader, its software Vulkan, so no GPU is needed; the
kernels are the WebGPU provider's own WGSL shaders, the same a GPU runs. Each model is checked
against torchvision in float32, and where onnxruntime placed each of its nodes is read from its
own verbose log ("Node placements"), not guessed from timing: a node the WebGPU provider has no
kernel for runs on the CPU (wasm), its inputs copied off the GPU and its outputs back.

The nodes the provider leaves to the CPU must all be size computations, a handful of elements
read from Shape (onnxruntime keeps those on the CPU by design): no node that touches a per-sample
tensor may leave the GPU.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import onnx
import pytest
from models import Variant, export, make_input, reference, relative_error
from onnxconverter_common import float16

from tools import Placement, WebRun, ort_web

TOLERANCE = 1e-4
FLOAT16_TOLERANCE = 1e-2
LOWERINGS = ("gather_rows", "gathernd", "gatherelements", "grid_sample", "grid_sample_ncnn")
#: Every lowering x path x (dynamic, static). "decompose": torch's own DeformConv export rewritten.
GRID = [
    Variant(
        f"{path}-{lowering}-{'dynamic' if dynamic else 'static'}",
        "legacy" if path == "legacy" else "dynamo",
        lowering=lowering,
        opset=17 if path == "legacy" else None,
        dynamic=dynamic,
        decompose=path == "decompose",
    )
    for path in ("legacy", "dynamo", "decompose")
    for lowering in LOWERINGS
    for dynamic in (True, False)
] + [
    # the workaround for GridSample-20 on the CPU: the dynamo exporter at opset 19
    Variant("dynamo19-grid_sample-static", "dynamo", lowering="grid_sample", opset=19, dynamic=False)
]
#: The package's default: the dynamo exporter, the default lowering, symbolic sizes.
DEFAULT = next(v for v in GRID if v.name == "dynamo-gather_rows-dynamic")
FP16 = Variant("fp16", "dynamo")
#: SwiftShader, the software adapter, has no shader-f16: onnxruntime then refuses float16 kernels.
NO_SHADER_F16 = r"requires f16 but the device does not support it"
WEBGPU = "WebGpuExecutionProvider"
#: onnxruntime's own nodes of these types (not in the model: its optimizer's rewrites of reads of
#: sizes) count as size computations.
SHAPE_OPS = {"Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Reshape"}
#: The opset whose GridSample (GridSample-20, mode "linear") onnxruntime-web 1.30's WebGPU provider
#: has no kernel for; the dynamo exporter of torch 2.14 writes opset 20 by default.
GRID_SAMPLE_20 = 20
#: The most elements a size computation's output holds (a shape of rank <= 8).
SIZE_ELEMENTS = 8


@pytest.fixture(scope="module")
def grid_models(network: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("webgpu-models")
    paths = {}
    for variant in GRID:
        paths[variant.name] = os.path.join(folder, f"{variant.name}.onnx")
        export(variant, network, paths[variant.name])
    return paths


@pytest.fixture(scope="module")
def webgpu(grid_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> WebRun:
    """Every model of GRID on WebGPU, at each of its sizes."""
    folder = tmp_path_factory.mktemp("webgpu")
    jobs = [(v, grid_models[v.name], [make_input(size) for size in v.sizes()]) for v in GRID]
    # the default export converted to float16 (float32 input and output), at the export size
    half = os.path.join(os.path.dirname(grid_models[DEFAULT.name]), "fp16.onnx")
    onnx.save(
        float16.convert_float_to_float16(onnx.load(grid_models[DEFAULT.name]), keep_io_types=True), half
    )
    jobs.append((FP16, half, [make_input(DEFAULT.sizes()[0])]))
    return ort_web(jobs, str(folder), "webgpu", verbose=True)


@pytest.mark.parametrize("variant", GRID, ids=lambda v: v.name)
def test_webgpu_matches_torchvision(variant: Variant, webgpu: WebRun, network: Any) -> None:
    for index, size in enumerate(variant.sizes()):
        got = webgpu.outputs[variant.name, index]
        assert not isinstance(got, str), f"WebGPU at {size}: {got}"
        error = relative_error(got, reference(network, make_input(size)))
        assert error <= TOLERANCE, f"WebGPU at {size}: error {error:.2e} above {TOLERANCE}"


def size_computations(model: onnx.ModelProto) -> set[str]:
    """The nodes of the model whose every output is known to hold at most SIZE_ELEMENTS elements."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        info.name: [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        for info in (*inferred.graph.value_info, *inferred.graph.output)
        if info.type.tensor_type.HasField("shape")
    }

    def small(name: str) -> bool:
        shape = shapes.get(name)
        return shape is not None and None not in shape and int(np.prod(shape)) <= SIZE_ELEMENTS

    return {f"{node.op_type} ({node.name})" for node in model.graph.node if all(map(small, node.output))}


def on_cpu(placement: Placement) -> list[str]:
    """The nodes placed anywhere but on the WebGPU provider."""
    off = [placed for provider, placed in placement.items() if provider != WEBGPU]
    assert all(len(placed["nodes"]) == placed["count"] for placed in off), f"unnamed nodes: {placement}"
    return [node for placed in off for node in placed["nodes"]]


def tensors_on_cpu(placement: Placement, model: onnx.ModelProto) -> list[str]:
    """The CPU nodes that are neither size computations of the model nor onnxruntime's own shape
    reads (nodes its optimizer wrote, of a shape-reading type)."""
    named = {f"{node.op_type} ({node.name})" for node in model.graph.node}
    sizes = size_computations(model)
    return sorted(
        node
        for node in on_cpu(placement)
        if node not in sizes and (node in named or node.split(" ")[0] not in SHAPE_OPS)
    )


@pytest.mark.parametrize("variant", GRID, ids=lambda v: v.name)
def test_webgpu_keeps_every_tensor_on_the_gpu(
    variant: Variant, webgpu: WebRun, grid_models: dict[str, str]
) -> None:
    placement = webgpu.placements[variant.name]
    assert placement.get(WEBGPU, {}).get("count"), f"no placement read for {variant.name}: {placement}"
    model = onnx.load(grid_models[variant.name])
    moved = tensors_on_cpu(placement, model)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if variant.lowering.startswith("grid_sample") and opset >= GRID_SAMPLE_20:
        # pinned: onnxruntime-web has no WebGPU GridSample-20 (docs/deploying.md, "Browser")
        assert moved and all(node.startswith("GridSample (") for node in moved), moved
    else:
        assert not moved, f"{len(moved)} nodes of per-sample tensors on the CPU: {moved}"
    if not variant.dynamic:  # with static sizes there is no size to compute
        assert sorted(on_cpu(placement)) == moved, f"on the CPU: {on_cpu(placement)}"


def test_webgpu_float16(webgpu: WebRun, network: Any) -> None:
    """The default export after onnxconverter-common's float16 conversion.

    On an adapter with shader-f16 (most GPUs) it must be within the float16 tolerance of the
    toolchain's fp16 rows; on one without (this machine's SwiftShader) onnxruntime must refuse it
    with its clear message, not compute something else.
    """
    got = webgpu.outputs[FP16.name, 0]
    if isinstance(got, str):
        assert re.search(NO_SHADER_F16, got), f"float16 model on WebGPU: {got}"
        return
    error = relative_error(got, reference(network, make_input(DEFAULT.sizes()[0])))
    assert error <= FLOAT16_TOLERANCE, f"float16 on WebGPU: error {error:.2e}"

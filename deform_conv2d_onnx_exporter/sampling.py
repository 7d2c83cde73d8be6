"""``sampling_nodes``: the nodes of every deformable convolution's sampling in an ONNX model.

Quantizers must leave these in float: they compute pixel coordinates, bilinear weights and the mask,
where 8 bits cannot hold a position (ONNX Runtime's ``nodes_to_exclude``; docs/deploying.md).
The subgraph is found from the graph's structure, not from node names, so that it works on the
models of every path (legacy and dynamo exports, ``decompose_model``) and every lowering:

- a *sampler* is a GridSample, or a Gather / GatherND / GatherElements whose indices depend on
  the values of a graph input (indices that depend only on shapes select dimensions, not pixels);
- the *coordinates* are everything a sampler's grid or indices are computed from, back to where the
  offset and mask enter: a layer (Conv, Gemm, a MatMul with a weight), a graph input or a constant;
  shapes enter through Shape, which is kept but not walked past;
- the *combination* is everything between a sampler and the layer that applies the kernel (a
  MatMul or Conv with a weight): corner weights, the mask multiply, the corner sum, reshapes, with
  the coordinates each of them reads.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

_SAMPLERS = {"GridSample": 1, "Gather": 1, "GatherND": 1, "GatherElements": 1}  # op -> coordinate input
_LAYERS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger"}
_SHAPE_READERS = {"Shape", "Size"}
#: A MatMul operand with at most this many elements is coordinate arithmetic (a 2x2 frame change),
#: not a layer's weight.
_SMALL_MATRIX = 4


def sampling_nodes(model: onnx.ModelProto) -> list[str]:
    """Name the nodes of every deformable convolution's sampling in ``model``, in graph order.

    Pass the result as ``nodes_to_exclude`` to ONNX Runtime's ``quantize_static`` or
    ``quantize_dynamic`` to quantize the convolutions (and the deformable convolutions' kernel
    products) while their sampling stays in float.

    Args:
        model: an ONNX model with deformable convolutions written as standard operators (by this
            package's exporters or ``decompose_model``); nodes inside If/Loop/Scan bodies are
            not searched.

    Returns:
        The names of the coordinate arithmetic, the GridSample or Gather nodes, the corner
        weights and the mask multiply; empty when the model samples nothing.

    Raises:
        ValueError: a sampling node has no name (quantizers select nodes by name).

    Example:
        >>> from onnxruntime.quantization import quantize_static
        >>> quantize_static("model.onnx", "model.int8.onnx", reader,
        ...                 nodes_to_exclude=sampling_nodes(onnx.load("model.onnx")))
    """
    graph = _SamplingGraph(model.graph)
    found: set[int] = set()  # ids of the sampling nodes
    for sampler in graph.samplers:
        found.add(id(sampler))
        graph.walk_back([sampler.input[_SAMPLERS[sampler.op_type]]], found)
        graph.walk_forward(sampler, found)
    nodes = [node for node in model.graph.node if id(node) in found]
    unnamed = [node.op_type for node in nodes if not node.name]
    if unnamed:
        raise ValueError(
            f"model: expected every sampling node to have a name, got {len(unnamed)} "
            f"without one ({', '.join(sorted(set(unnamed)))}); name them, for example "
            "with onnxruntime's quant_pre_process"
        )
    return [node.name for node in nodes]


class _SamplingGraph:
    """The main graph's nodes by the tensors they write and read, with the walks that collect a
    sampling subgraph (module docstring)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {output: node for node in graph.node for output in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = _constant_tensors(graph)
        varying = _value_dependent(graph)
        #: GridSample, and the Gathers whose indices depend on a graph input's values
        self.samplers = [
            node
            for node in graph.node
            if node.op_type in _SAMPLERS
            and (node.op_type == "GridSample" or node.input[_SAMPLERS[node.op_type]] in varying)
        ]
        self._sampler_ids = {id(node) for node in self.samplers}

    def is_layer(self, node: onnx.NodeProto) -> bool:
        """A Conv, Gemm or MatMul with a weight larger than a coordinate frame change."""
        if node.op_type not in _LAYERS:
            return False
        weights = [self.constants[name] for name in node.input if name in self.constants]
        return bool(weights) and max(weights) > _SMALL_MATRIX

    def walk_back(self, names: Iterable[str], found: set[int]) -> None:
        """Add to ``found`` what computes ``names``, back to a layer, a graph input or a constant."""
        stack = [name for name in names if name and name not in self.constants]
        while stack:
            node = self.producer.get(stack.pop())
            if node is None or id(node) in found or self.is_layer(node):
                continue
            found.add(id(node))
            if id(node) in self._sampler_ids:  # reached from its samples: only its coordinates, not the image
                stack.append(node.input[_SAMPLERS[node.op_type]])
            elif node.op_type not in _SHAPE_READERS:
                stack.extend(name for name in node.input if name and name not in self.constants)

    def walk_forward(self, sampler: onnx.NodeProto, found: set[int]) -> None:
        """Add to ``found`` what combines ``sampler``'s samples up to the kernel's layer, with what
        each of those nodes reads besides them."""
        stack = list(sampler.output)
        while stack:
            for node in self.consumers.get(stack.pop(), []):
                if self.is_layer(node) or node.op_type in _SHAPE_READERS or id(node) in found:
                    continue
                found.add(id(node))
                self.walk_back(node.input, found)
                stack.extend(node.output)


def _constant_tensors(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensors computed from initializers and Constant nodes only: name -> element count (0 if unknown)."""
    sizes = {tensor.name: _count(tensor.dims) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values = [a.t for a in node.attribute if a.name == "value" and a.HasField("t")]
            sizes[node.output[0]] = _count(values[0].dims) if values else 1
        elif node.input and all(name in sizes for name in node.input if name):
            for output in node.output:  # the largest operand stands for the result's size
                sizes[output] = max(sizes[name] for name in node.input if name)
    return sizes


def _value_dependent(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose values depend on a graph input's values (not only on its shape)."""
    initializers = {tensor.name for tensor in graph.initializer}
    varying = {value.name for value in graph.input if value.name not in initializers}
    for node in graph.node:
        if node.op_type not in _SHAPE_READERS and any(name in varying for name in node.input):
            varying.update(node.output)
    return varying


def _count(dims: Iterable[int]) -> int:
    count = 1
    for dim in dims:
        count *= dim
    return count

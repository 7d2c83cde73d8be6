"""Rewrite every DeformConv node of an ONNX model into standard operators, without torch.

The rest of the model (nodes, names, initializers, value_info, metadata, symbolic dimensions) is
kept as it is. The steps: shape inference at the model's own opset (the only one where
DeformConv's shapes can be inferred), conversion of the other nodes to the target opset, then one
:class:`.onnx_adapter.OnnxGraphEmitter` per DeformConv node.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import onnx

from .lowering import DECOMPOSITION_MIN_OPSET, NATIVE_MIN_OPSET, LoweringOptions
from .onnx_adapter import OnnxGraphEmitter, TensorFacts, params_of, replace_node
from .params import DeformConvExportError

#: Where DeformConv nodes wait while onnx's version converter, which has no DeformConv below
#: opset 19, converts the rest of the model.
_PENDING_DOMAIN = "deform_conv2d_onnx_exporter.pending"


@dataclass(frozen=True)
class FoundNode:
    """A DeformConv node and where it is: ``location`` is empty for the main graph, else the chain
    of subgraphs (``If 'cond'.then_branch``) that holds it."""

    node: onnx.NodeProto
    location: str = ""

    def describe(self) -> str:
        where = f" in {self.location}" if self.location else ""
        return f"DeformConv {self.node.name!r}{where}"


@dataclass
class Decomposed:
    """The result of :func:`decompose_model`.

    Attributes:
        model: the rewritten model.
        rewritten: names of the DeformConv nodes replaced, in graph order.
        left_in_subgraphs: DeformConv nodes inside If/Loop/Scan bodies, left as they were.
    """

    model: onnx.ModelProto
    rewritten: list[str] = field(default_factory=list)
    left_in_subgraphs: list[FoundNode] = field(default_factory=list)


def find_deform_convs(graph: onnx.GraphProto, location: str = "") -> Iterator[FoundNode]:
    """Every default-domain DeformConv node of ``graph`` and of its subgraphs, in graph order."""
    for node in graph.node:
        if node.op_type == "DeformConv" and node.domain in ("", "ai.onnx"):
            yield FoundNode(node, location)
        for attribute in node.attribute:
            for index, body in enumerate(_subgraphs(attribute)):
                suffix = f"[{index}]" if attribute.type == onnx.AttributeProto.GRAPHS else ""
                inner = f"{node.op_type} {node.name!r}.{attribute.name}{suffix}"
                yield from find_deform_convs(body, f"{location} > {inner}" if location else inner)


def model_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise DeformConvExportError("the model imports no default-domain (ai.onnx) opset")


def decompose_model(
    model: onnx.ModelProto,
    opset: Optional[int] = None,
    lowering: str = "auto",
    enable_openvino_patch: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> Decomposed:
    """Replace every DeformConv node of the main graph by standard operators.

    Args:
        model: a model with DeformConv nodes (opset 19 or higher); it is not modified.
        opset: the default-domain opset of the result, 12 or higher; None keeps the model's.
            The other nodes are converted with ``onnx.version_converter``.
        lowering, enable_openvino_patch: how the nodes are written (README, "Lowerings").
        progress: called as ``progress(done, total, node_name)`` after each rewritten node.

    Returns:
        The rewritten model, the nodes replaced, and the nodes left inside subgraphs.

    Raises:
        DeformConvExportError: no DeformConv in the main graph, an opset below 12 or one the
            lowering or the version converter cannot reach, or a node that cannot be rewritten.

    Example::

        >>> result = decompose_model(onnx.load("model.onnx"), opset=17)
        >>> onnx.save(result.model, "model.decomposed.onnx")
    """
    source = model_opset(model)
    target = source if opset is None else opset
    options = LoweringOptions.from_api(None, enable_openvino_patch, lowering)
    found = list(find_deform_convs(model.graph))
    nested = [f for f in found if f.location]
    _check_request(len(found) - len(nested), nested, target, options)

    facts = tensor_facts(model)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    if target != source:
        result = _convert_other_nodes(result, source, target)
    rewritten = _replace_deform_convs(result, facts, options, target, len(found) - len(nested), progress)
    onnx.checker.check_model(result)
    return Decomposed(result, rewritten, nested)


def _check_request(main: int, nested: list[FoundNode], target: int, options: LoweringOptions) -> None:
    """Refuse, before any work, a model or a target opset the rewrite cannot serve.

    Args:
        main: how many DeformConv nodes the main graph has.
        nested: the DeformConv nodes inside subgraphs (kept as they are).
    """
    if not main:
        inside = f" ({len(nested)} inside subgraphs, which are not rewritten)" if nested else ""
        raise DeformConvExportError(f"the model has no DeformConv node in its main graph{inside}")
    if target < DECOMPOSITION_MIN_OPSET:
        raise DeformConvExportError(
            f"opset: the decomposition needs opset >= {DECOMPOSITION_MIN_OPSET} (GatherND with batch_dims), "
            f"got {target}"
        )
    options.check_opset(target)
    if nested and target < NATIVE_MIN_OPSET:
        raise DeformConvExportError(
            f"opset: {nested[0].describe()} is inside a subgraph, which is not rewritten, and "
            f"DeformConv needs opset >= {NATIVE_MIN_OPSET}, got {target}"
        )


def _replace_deform_convs(
    model: onnx.ModelProto,
    facts: dict[str, TensorFacts],
    options: LoweringOptions,
    opset: int,
    total: int,
    progress: Optional[Callable[[int, int, str], None]],
) -> list[str]:
    """Replace every main-graph DeformConv node of ``model``, in place; return their names."""
    fresh_name = _name_factory(model.graph)
    overridable = {value.name for value in model.graph.input}  # an initializer that is also an input
    constants = {t.name: t for t in model.graph.initializer if t.name not in overridable}
    nodes: list[onnx.NodeProto] = []
    rewritten: list[str] = []
    read: set[str] = set()  # the initializers the replaced nodes read, and the new ones
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx", _PENDING_DOMAIN) or node.op_type != "DeformConv":
            nodes.append(node)
            continue
        read.update(name for name in node.input if name in constants)
        prefix = node.name or fresh_name("DeformConv")
        emitter = OnnxGraphEmitter(opset, facts, fresh_name, prefix, constants)
        replace_node(node, params_of(node, facts), options, emitter)
        nodes.extend(emitter.nodes)
        model.graph.initializer.extend(emitter.initializers)
        read.update(tensor.name for tensor in emitter.initializers)  # some were folded further
        rewritten.append(prefix)
        if progress is not None:
            progress(len(rewritten), total, prefix)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unread_initializers(model.graph, read)
    return rewritten


def _drop_unread_initializers(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the ``candidates`` no node (subgraphs included) or graph output reads any more.

    A weight that only a replaced DeformConv read is now folded into the decomposition's own
    constants; keeping it would store it twice. Constants the decomposition folded into others
    go too.
    """
    used = {value.name for value in graph.output}
    used.update(name for g in _with_bodies(graph) for node in g.node for name in node.input)
    kept = [tensor for tensor in graph.initializer if tensor.name not in candidates or tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _with_bodies(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph``, then every If/Loop/Scan body in it, at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for body in _subgraphs(attribute):
                yield from _with_bodies(body)


def _subgraphs(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attribute.type == onnx.AttributeProto.GRAPH:
        return [attribute.g]
    if attribute.type == onnx.AttributeProto.GRAPHS:
        return list(attribute.graphs)
    return []


def tensor_facts(model: onnx.ModelProto) -> dict[str, TensorFacts]:
    """Element type and shape of every main-graph tensor ONNX shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as error:  # onnx raises several types, all meaning "not a valid model"
        raise DeformConvExportError(f"ONNX shape inference failed on the model: {error}") from error
    facts: dict[str, TensorFacts] = {}
    graph = inferred.graph
    for info in itertools.chain(graph.input, graph.value_info, graph.output):
        tensor = info.type.tensor_type
        shape = None
        if tensor.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        facts[info.name] = (tensor.elem_type or None, shape)
    for initializer in graph.initializer:
        facts[initializer.name] = (initializer.data_type, list(initializer.dims))
    return facts


def _convert_other_nodes(model: onnx.ModelProto, source: int, target: int) -> onnx.ModelProto:
    """The model at opset ``target``, its main-graph DeformConv nodes in a domain the converter skips."""
    for node in model.graph.node:
        if node.op_type == "DeformConv" and node.domain in ("", "ai.onnx"):
            node.domain = _PENDING_DOMAIN
    model.opset_import.append(onnx.helper.make_opsetid(_PENDING_DOMAIN, 1))
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as error:  # the converter raises RuntimeError or a C++ assertion's text
        # The converter's text starts with its C++ source location and assertion; keep the reason.
        reason = str(error).strip().splitlines()[-1].split("failed: ")[-1]
        raise DeformConvExportError(
            f"opset: onnx.version_converter cannot convert the model's other nodes from opset "
            f"{source} to {target} ({reason}); choose an opset it can reach, such as {source}"
        ) from error
    pending = [entry for entry in converted.opset_import if entry.domain == _PENDING_DOMAIN]
    for entry in pending:
        converted.opset_import.remove(entry)
    _restore_what_the_converter_drops(model.graph, converted.graph)
    return converted


def _restore_what_the_converter_drops(original: onnx.GraphProto, converted: onnx.GraphProto) -> None:
    """Put back the nodes' metadata and the value_info that ``onnx.version_converter`` drops.

    onnx 1.23's converter rebuilds the graph: node ``metadata_props`` (where exporters keep the
    source line) are lost, and value_info is replaced by what its shape inference finds, which
    leaves out entries such as the initializers'. Nodes are matched by their outputs, which the
    converter keeps.
    """
    metadata = {tuple(node.output): node.metadata_props for node in original.node if node.metadata_props}
    for node in converted.node:
        props = metadata.get(tuple(node.output))
        if props is not None and not node.metadata_props:
            node.metadata_props.extend(props)
    known = {info.name for info in converted.value_info}
    converted.value_info.extend(info for info in original.value_info if info.name not in known)


def _name_factory(graph: onnx.GraphProto) -> Callable[[str], str]:
    """A function returning names used nowhere in ``graph`` (subgraphs included) nor before."""
    taken: set[str] = set()
    for g in _with_bodies(graph):
        taken.update(i.name for i in itertools.chain(g.input, g.output, g.value_info, g.initializer))
        for node in g.node:
            taken.add(node.name)
            taken.update(node.input)
            taken.update(node.output)
    counters: dict[str, itertools.count[int]] = {}

    def fresh(base: str) -> str:
        counter = counters.setdefault(base, itertools.count())
        name = base
        while name in taken:
            name = f"{base}_{next(counter)}"
        taken.add(name)
        return name

    return fresh

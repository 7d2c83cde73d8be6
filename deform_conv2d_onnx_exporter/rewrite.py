"""Rewrite every deformable convolution node of an ONNX model into standard operators, without torch.

The nodes may be written in any of :data:`.forms.FORMS`: ONNX's DeformConv or the custom operators
of mmcv, mmdeploy and OpenVINO. The rest of the model (nodes, names, initializers, value_info,
metadata, symbolic dimensions) is kept as it is. The steps: shape inference at the model's own
opset (the only one where DeformConv's shapes can be inferred), conversion of the other nodes to
the target opset, then one :class:`.onnx_adapter.OnnxGraphEmitter` per node.

Shape inference, version conversion and the final check run on a copy of the model without its
large initializers (:func:`_weightless`): they serialise the model they get, which would hold a
model's weights in memory two or three times more, and fail on 2 GB.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import onnx

from .forms import CUSTOM_DOMAINS, DeformConvNode, Form, form_of, read
from .lowering import DECOMPOSITION_MIN_OPSET, NATIVE_MIN_OPSET, LoweringOptions
from .onnx_adapter import OnnxGraphEmitter, TensorFacts, params_of, replace_node
from .params import DeformConvExportError

#: Where DeformConv nodes wait while onnx's version converter, which has no DeformConv below
#: opset 19, converts the rest of the model.
_PENDING_DOMAIN = "deform_conv2d_onnx_exporter.pending"
#: Initializers larger than this (bytes) are left out of the copy that shape inference, the
#: version converter and the checker get; smaller ones may be shapes that inference reads.
_LARGE = 4096


@dataclass(frozen=True)
class FoundNode:
    """A deformable convolution node and where it is: ``location`` is empty for the main graph,
    else the chain of subgraphs (``If 'cond'.then_branch``) that holds it."""

    node: onnx.NodeProto
    form: Form
    location: str = ""

    def describe(self) -> str:
        where = f" in {self.location}" if self.location else ""
        return f"{self.form.name} {self.node.name!r}{where}"


@dataclass
class Decomposed:
    """The result of :func:`decompose_model`.

    Attributes:
        model: the rewritten model.
        rewritten: names of the nodes replaced, in graph order.
        left_in_subgraphs: deformable convolutions inside If/Loop/Scan bodies, left as they were.
    """

    model: onnx.ModelProto
    rewritten: list[str] = field(default_factory=list)
    left_in_subgraphs: list[FoundNode] = field(default_factory=list)


def find_deform_convs(graph: onnx.GraphProto, location: str = "") -> Iterator[FoundNode]:
    """Every deformable convolution node of ``graph`` and of its subgraphs, in any of the forms
    :data:`.forms.FORMS`, in graph order."""
    for node in graph.node:
        form = form_of(node)
        if form is not None:
            yield FoundNode(node, form, location)
        for attribute in node.attribute:
            for index, body in enumerate(_subgraphs(attribute)):
                suffix = f"[{index}]" if attribute.type == onnx.AttributeProto.GRAPHS else ""
                inner = f"{node.op_type} {node.name!r}.{attribute.name}{suffix}"
                yield from find_deform_convs(body, f"{location} > {inner}" if location else inner)


def model_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version."""
    return opset_imports(model)[""]


def opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    """The model's opset imports, version by domain ("" for ONNX's own, however written).

    Raises:
        DeformConvExportError: the model imports no default-domain opset.
    """
    imports = {"" if e.domain == "ai.onnx" else e.domain: int(e.version) for e in model.opset_import}
    if "" not in imports:
        raise DeformConvExportError("the model imports no default-domain (ai.onnx) opset")
    return imports


def read_main_graph(model: onnx.ModelProto, found: list[FoundNode]) -> list[DeformConvNode]:
    """The main graph's nodes among ``found``, read and checked (:func:`.forms.read`)."""
    imports = opset_imports(model)
    return [read(f.node, f.form, imports) for f in found if not f.location]


def decompose_model(
    model: onnx.ModelProto,
    opset: Optional[int] = None,
    lowering: str = "auto",
    enable_openvino_patch: bool = False,
    progress: Optional[Callable[[int, int, str], None]] = None,
    *,
    in_place: bool = False,
    base_dir: Optional[str] = None,
) -> Decomposed:
    """Replace every deformable convolution node of the main graph by standard operators.

    The nodes may be ONNX DeformConv (opset 19 or 22) or the custom operators of mmcv, mmdeploy
    and OpenVINO (README, "Already have an ONNX file"); ``lowering="native"`` turns each into
    ONNX DeformConv. Custom domains no node uses any more leave the opset imports.

    Args:
        model: a model with deformable convolution nodes; it is not modified unless ``in_place``.
        opset: the default-domain opset of the result, 12 or higher; None keeps the model's, or
            raises it to the lowest the lowering needs (12; 16 for ``grid_sample``; 19 for
            ``native``). The other nodes are converted with ``onnx.version_converter``.
        lowering, enable_openvino_patch: how the nodes are written (README, "Lowerings").
        progress: called as ``progress(done, total, node_name)`` after each rewritten node.
        in_place: rewrite ``model`` itself, and return it, rather than a copy: a large model is
            then held in memory once, not twice.
        base_dir: for a model loaded with ``onnx.load(path, load_external_data=False)``, the
            folder of its external data files (``os.path.dirname(path)``). Each weight is then
            read when its node is rewritten, and the result holds all its data in memory, ready
            to be saved anywhere; the original weights of the replaced nodes are never loaded.

    Returns:
        The rewritten model, the nodes replaced, and the nodes left inside subgraphs.

    Raises:
        DeformConvExportError: no deformable convolution in the main graph, an opset below 12
            or one the lowering or the version converter cannot reach, or a node that cannot be
            rewritten (naming the node, the attribute or input, what was expected and what was got).

    Example::

        >>> result = decompose_model(onnx.load("model.onnx"), opset=17)
        >>> onnx.save(result.model, "model.decomposed.onnx")
    """
    source = model_opset(model)
    options = LoweringOptions.from_api(None, enable_openvino_patch, lowering)
    target = max(source, options.min_opset()) if opset is None else opset
    found = list(find_deform_convs(model.graph))
    nested = [f for f in found if f.location]
    _check_request(len(found) - len(nested), nested, target, options)
    nodes = read_main_graph(model, found)

    facts = tensor_facts(model)
    result = model if in_place else _copy(model)
    if target != source:
        _convert_other_nodes(result, source, target)
    rewritten = _replace_deform_convs(result, nodes, facts, options, target, progress, base_dir or "")
    _finish(result, base_dir)
    return Decomposed(result, rewritten, nested)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _finish(model: onnx.ModelProto, base_dir: Optional[str]) -> None:
    """Drop the custom domains no node uses, load the external data left (``base_dir``: where its
    files are, None when it is loaded), and check the rewritten model."""
    _drop_unused_custom_domains(model)
    if base_dir is not None:
        _load_external_data(model, base_dir)
    try:
        onnx.checker.check_model(_weightless(model))
    except onnx.checker.ValidationError as error:
        raise DeformConvExportError(f"the rewritten model is not valid ONNX: {error}") from error


def _check_request(main: int, nested: list[FoundNode], target: int, options: LoweringOptions) -> None:
    """Refuse, before any work, a model or a target opset the rewrite cannot serve.

    Args:
        main: how many deformable convolution nodes the main graph has.
        nested: the deformable convolution nodes inside subgraphs (kept as they are).
    """
    if not main:
        inside = f" ({len(nested)} inside subgraphs, which are not rewritten)" if nested else ""
        raise DeformConvExportError(
            f"the model has no deformable convolution node (DeformConv, or mmcv's, mmdeploy's or "
            f"OpenVINO's) in its main graph{inside}"
        )
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
    found: list[DeformConvNode],
    facts: dict[str, TensorFacts],
    options: LoweringOptions,
    opset: int,
    progress: Optional[Callable[[int, int, str], None]],
    base_dir: str,
) -> list[str]:
    """Replace the main-graph nodes ``found`` (read from ``model`` or from the model it was copied
    or converted from) in ``model``, in place; return their names. ``base_dir``: where the files
    of initializers with external data are."""
    fresh_name = _name_factory(model.graph)
    overridable = {value.name for value in model.graph.input}  # an initializer that is also an input
    constants = {t.name: t for t in model.graph.initializer if t.name not in overridable}
    by_output = {f.node.output[0]: f for f in found}  # the converter rebuilds nodes; outputs stay
    nodes: list[onnx.NodeProto] = []
    rewritten: list[str] = []
    read: set[str] = set()  # the model's initializers the replaced nodes read
    for node in model.graph.node:
        item = by_output.get(node.output[0]) if len(node.output) == 1 else None
        if item is None or (node.domain != _PENDING_DOMAIN and form_of(node) is None):
            nodes.append(node)
            continue
        read.update(name for name in node.input if name in constants)
        prefix = node.name or fresh_name(item.form.op_type)
        emitter = OnnxGraphEmitter(opset, facts, fresh_name, prefix, constants, base_dir)
        replace_node(item, params_of(item, facts), options, emitter)
        nodes.extend(emitter.nodes)
        model.graph.initializer.extend(emitter.initializers())
        rewritten.append(prefix)
        if progress is not None:
            progress(len(rewritten), len(found), prefix)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unread_initializers(model.graph, read)
    return rewritten


def _load_external_data(model: onnx.ModelProto, base_dir: str) -> None:
    """Load the data of the initializers that still keep it in files under ``base_dir``."""
    try:
        onnx.external_data_helper.load_external_data_for_model(model, base_dir)
    except (OSError, onnx.checker.ValidationError) as error:
        raise DeformConvExportError(f"cannot read the model's external data: {error}") from error


def _drop_unused_custom_domains(model: onnx.ModelProto) -> None:
    """Remove the opset imports of :data:`.forms.CUSTOM_DOMAINS` that no node uses any more."""
    used = {node.domain for graph in _with_bodies(model.graph) for node in graph.node}
    used.update(node.domain for function in model.functions for node in function.node)
    unused = [e for e in model.opset_import if e.domain in CUSTOM_DOMAINS and e.domain not in used]
    for entry in unused:
        model.opset_import.remove(entry)


def _drop_unread_initializers(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the ``candidates`` no node (subgraphs included) or graph output reads any more.

    A weight that only a replaced node read is now folded into the decomposition's own
    constants; keeping it would store it twice.
    """
    used = {value.name for value in graph.output}
    used.update(name for g in _with_bodies(graph) for node in g.node for name in node.input)
    # deleted one by one: protobuf's upb backend would copy every kept tensor on a re-extend
    for index in reversed(range(len(graph.initializer))):
        name = graph.initializer[index].name
        if name in candidates and name not in used:
            del graph.initializer[index]


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
    """Element type and shape of every main-graph tensor ONNX shape inference can tell.

    Shape inference knows no custom operator: the output of each mmcv, mmdeploy or OpenVINO node
    is stated from its inputs, (B, Cout, oh, ow) in the input's type, and inference runs again
    for the nodes after it, as often as such nodes follow one another.
    """
    skeleton = _weightless(model)
    custom = [(node, form) for node in skeleton.graph.node if (form := form_of(node)) and form.domain]
    facts = _inferred_facts(skeleton)
    for _ in custom:
        unknown = [(node, form) for node, form in custom if node.output and node.output[0] not in facts]
        stated = [_output_info(node, form, facts) for node, form in unknown]
        known = [info for info in stated if info is not None]
        if not known:
            break
        skeleton.graph.value_info.extend(known)
        facts = _inferred_facts(skeleton)
    return facts


def _output_info(
    node: onnx.NodeProto, form: Form, facts: dict[str, TensorFacts]
) -> Optional[onnx.ValueInfoProto]:
    """The output of a custom-form node from its inputs' facts: (B, Cout, oh, ow); None if unknown."""
    tensors = dict(zip(form.inputs, node.input))
    elem_type, x = facts.get(tensors.get("input", ""), (None, None))
    w = facts.get(tensors.get("weight", ""), (None, None))[1]
    offset = facts.get(tensors.get("offset", ""), (None, None))[1]
    if elem_type is None or not node.output or not node.output[0]:
        return None
    batch = x[0] if x is not None and len(x) == 4 else None
    out_channels = w[0] if w is not None and len(w) == 4 else None
    size = list(offset[2:]) if offset is not None and len(offset) == 4 else [None, None]
    shape = [batch, out_channels, *size]
    return onnx.helper.make_tensor_value_info(node.output[0], elem_type, shape)


def _inferred_facts(model: onnx.ModelProto) -> dict[str, TensorFacts]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as error:  # onnx raises several types, all meaning "not a valid model"
        raise DeformConvExportError(f"ONNX shape inference failed on the model: {error}") from error
    facts: dict[str, TensorFacts] = {}
    graph = inferred.graph
    for info in itertools.chain(graph.input, graph.value_info, graph.output):
        tensor = info.type.tensor_type
        if not tensor.elem_type and not tensor.HasField("shape"):
            continue  # nothing known: left out, so that a custom node's output gets stated
        shape = None
        if tensor.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        facts[info.name] = (tensor.elem_type or None, shape)
    for initializer in graph.initializer:
        facts[initializer.name] = (initializer.data_type, list(initializer.dims))
    return facts


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main-graph initializers larger than :data:`_LARGE` bytes, or with
    their data in external files, are graph inputs of the same type and shape instead: what shape
    inference, the version converter and the checker need, without the weights' bytes."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    inputs = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if _data_bytes(tensor) <= _LARGE and tensor.data_location != onnx.TensorProto.EXTERNAL:
            skeleton.graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            info = onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            skeleton.graph.input.append(info)
    return skeleton


def _data_bytes(tensor: onnx.TensorProto) -> int:
    """About how many bytes ``tensor``'s data takes, from its shape (upb computes a message's
    ByteSize by encoding it)."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def data_bytes(model: onnx.ModelProto) -> int:
    """About how many bytes the data of ``model``'s main-graph initializers take."""
    return sum(_data_bytes(tensor) for tensor in model.graph.initializer)


def _copy_fields(source: Any, target: Any, skip: str) -> None:
    """Copy every field of protobuf message ``source`` but ``skip`` into ``target``."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(target, descriptor.name).extend(value)
        elif hasattr(value, "CopyFrom"):
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def _convert_other_nodes(model: onnx.ModelProto, source: int, target: int) -> None:
    """Convert ``model``, in place, to opset ``target``, but for its main-graph DeformConv nodes,
    which wait in a domain the converter skips; the large initializers are not touched.

    Raises:
        DeformConvExportError: the converter cannot convert the other nodes.
    """
    if all(form_of(node) is not None for node in model.graph.node):
        # Nothing else to convert: only the opset changes. (onnx 1.17's converter crashed here on
        # a model holding one custom-domain node.)
        onnx_opset = [entry for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
        for entry in onnx_opset:
            entry.version = target
        model.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(onnx_opset))
        return
    skeleton = _weightless(model)
    for node in skeleton.graph.node:
        if node.op_type == "DeformConv" and node.domain in ("", "ai.onnx"):
            node.domain = _PENDING_DOMAIN
    skeleton.opset_import.append(onnx.helper.make_opsetid(_PENDING_DOMAIN, 1))
    try:
        converted = onnx.version_converter.convert_version(skeleton, target)
    except Exception as error:  # the converter raises RuntimeError or a C++ assertion's text
        # The converter's text starts with its C++ source location and assertion; keep the reason.
        reason = str(error).strip().splitlines()[-1].split("failed: ")[-1]
        raise DeformConvExportError(
            f"opset: onnx.version_converter cannot convert the model's other nodes from opset "
            f"{source} to {target} ({reason}); choose an opset it can reach, such as {source}"
        ) from error
    _restore_what_the_converter_drops(model.graph, converted.graph)
    small = {t.name for t in skeleton.graph.initializer}
    graph = model.graph
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in small:
            del graph.initializer[index]
    graph.initializer.extend(converted.graph.initializer)
    inputs = {value.name for value in model.graph.input}
    placeholders = {t.name for t in graph.initializer if t.name not in small and t.name not in inputs}
    for name in ("node", "value_info", "input", "output"):
        del getattr(graph, name)[:]
    graph.node.extend(converted.graph.node)
    graph.value_info.extend(converted.graph.value_info)
    graph.input.extend(v for v in converted.graph.input if v.name not in placeholders)
    graph.output.extend(converted.graph.output)
    del model.opset_import[:]
    model.opset_import.extend(e for e in converted.opset_import if e.domain != _PENDING_DOMAIN)
    del model.functions[:]
    model.functions.extend(converted.functions)
    model.ir_version = converted.ir_version


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

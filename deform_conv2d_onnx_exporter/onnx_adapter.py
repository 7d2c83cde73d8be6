"""Adapter 3: the core emitted into a plain ONNX graph, in place of one ``DeformConv`` node.

No torch here: values are tensor names, nodes are ``onnx.NodeProto``. Static shapes and element
types come from ONNX shape inference run on the model beforehand (see :mod:`.rewrite`).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .decomposition import deform_conv2d
from .emitter import Attribute, Emitter
from .lowering import LoweringOptions
from .params import DeformConvExportError, DeformConvParams, StaticShape, show_shape

#: What shape inference told about a tensor: (element type or None, shape or None).
TensorFacts = tuple[Optional[int], StaticShape]

#: DeformConv's attributes (opset 19 and 22 alike), all of which this adapter reads.
ATTRIBUTES = ("dilations", "group", "kernel_shape", "offset_group", "pads", "strides")


class OnnxGraphEmitter(Emitter[str]):
    """Collects the nodes and constants that replace one DeformConv node.

    A node whose inputs are all constants (the model's initializers, such as the weight, or the
    core's own constants) is computed here and written as a constant, as the torch exporters
    fold it: some converters (onnx2tf) fail on a Reshape of an initializer.

    Args:
        opset: the default-domain opset of the model the nodes go into.
        facts: element type and shape of every tensor of the model, by name.
        fresh_name: returns an unused tensor or node name built from its argument.
        prefix: the start of every new node's name (the replaced node's name).
        initializers: the model's initializers that are not also graph inputs, by name.
    """

    path = "rewrite"

    def __init__(
        self,
        opset: int,
        facts: dict[str, TensorFacts],
        fresh_name: Callable[[str], str],
        prefix: str,
        initializers: Mapping[str, onnx.TensorProto],
    ) -> None:
        super().__init__(opset)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._facts = facts
        self._fresh_name = fresh_name
        self._prefix = prefix
        self._model_constants = initializers
        self._values: dict[str, np.ndarray] = {}  # the constants this emitter wrote

    def _node(self, op_type: str, inputs: Sequence[str], attributes: dict[str, Attribute], name: str) -> str:
        if all(i in self._values or i in self._model_constants for i in inputs):
            return self._constant(_evaluate(op_type, [self._value(i) for i in inputs], attributes))
        # the node and its only output share one fresh name: <DeformConv node>/<section>/<op_type>
        name = self._fresh_name(f"{self._prefix}/{name}")
        self.nodes.append(_make_node(op_type, inputs, name, attributes))
        return name

    def _constant(self, array: np.ndarray) -> str:
        name = self._fresh_name(f"{self._prefix}/const")
        self.initializers.append(numpy_helper.from_array(array, name))
        self._values[name] = array
        return name

    def _value(self, name: str) -> np.ndarray:
        """The value of a constant: one this emitter wrote, or one of the model's initializers."""
        if name in self._values:
            return self._values[name]
        return numpy_helper.to_array(self._model_constants[name])

    def static_shape(self, value: str) -> StaticShape:
        return self._facts.get(value, (None, None))[1]

    def elem_type(self, value: str) -> Optional[int]:
        return self._facts.get(value, (None, None))[0]


def _evaluate(op_type: str, inputs: Sequence[np.ndarray], attributes: dict[str, Attribute]) -> np.ndarray:
    """One node computed on constant inputs by ONNX's reference implementation."""
    names = [f"x{i}" for i in range(len(inputs))]
    (out,) = ReferenceEvaluator(_make_node(op_type, names, "y", attributes)).run(
        None, dict(zip(names, inputs))
    )
    return np.asarray(out)


def _make_node(
    op_type: str, inputs: Sequence[str], output: str, attributes: dict[str, Attribute]
) -> onnx.NodeProto:
    """A node named as its only output."""
    node = helper.make_node(op_type, list(inputs), [output], name=output)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attributes.items()))
    return node


def params_of(node: onnx.NodeProto, facts: dict[str, TensorFacts]) -> DeformConvParams:
    """The parameters of a DeformConv node, validated against the static shapes known.

    ONNX DeformConv's pads are (h_begin, w_begin, h_end, w_end). The sampling grid depends only on
    the begin pads; the end pads only decide the output size, which the decomposition reads
    from the offset's (oh, ow), so they are checked against it where both are static.

    Raises:
        DeformConvExportError: naming the node and the attribute or input at fault.
    """
    where = f"DeformConv node {node.name!r}"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unknown = sorted(set(attrs) - set(ATTRIBUTES))
    if unknown:
        raise DeformConvExportError(
            f"{where}: unsupported attribute {', '.join(unknown)}; expected only {', '.join(ATTRIBUTES)}"
        )
    x, w, offset = node.input[:3]
    mask = _optional_input(node, 4)
    input_shape, weight_shape = facts.get(x, (None, None))[1], facts.get(w, (None, None))[1]
    offset_shape = facts.get(offset, (None, None))[1]
    if input_shape is not None and len(input_shape) != 4:
        raise DeformConvExportError(
            f"{where}: only 2-D DeformConv is supported (input of rank 4), got input rank {len(input_shape)}"
        )
    if weight_shape is None or any(d is None for d in weight_shape):
        raise DeformConvExportError(
            f"{where}: the weight {w!r} needs a static shape (an initializer, or a shape ONNX shape "
            f"inference can compute), got {show_shape(weight_shape)}"
        )
    kernel = list(weight_shape[2:])
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != kernel:
        raise DeformConvExportError(
            f"{where}: kernel_shape={list(attrs['kernel_shape'])} contradicts the weight's shape "
            f"{show_shape(weight_shape)}"
        )
    strides = _pair(where, "strides", attrs.get("strides", [1, 1]))
    dilations = _pair(where, "dilations", attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or min(pads) < 0:
        raise DeformConvExportError(
            f"{where}: pads: expected 4 values >= 0 (h_begin, w_begin, h_end, w_end), got {pads}"
        )
    _check_output_size(where, input_shape, offset_shape, kernel, strides, pads, dilations)
    try:
        return DeformConvParams.from_call(
            input_shape=input_shape,
            weight_shape=weight_shape,
            offset_shape=offset_shape,
            mask_shape=None if mask is None else facts.get(mask, (None, None))[1],
            stride=strides,
            padding=(pads[0], pads[1]),
            dilation=dilations,
            groups=int(attrs.get("group", 1)),
            offset_groups=int(attrs.get("offset_group", 1)),
            use_mask=mask is not None,
        )
    except DeformConvExportError as error:
        raise DeformConvExportError(f"{where}: {error}") from error


def replace_node(
    node: onnx.NodeProto,
    params: DeformConvParams,
    options: LoweringOptions,
    emitter: OnnxGraphEmitter,
) -> None:
    """Emit the decomposition of ``node`` into ``emitter``; its last node writes ``node``'s output.

    The new nodes carry the replaced node's metadata (exporters keep the source location there).
    """
    x, w, offset = node.input[:3]
    out = deform_conv2d(
        emitter, params, options, x, w, offset, _optional_input(node, 4), _optional_input(node, 3)
    )
    producer = next(n for n in reversed(emitter.nodes) if out in n.output)
    producer.output[list(producer.output).index(out)] = node.output[0]
    for new in emitter.nodes:
        new.metadata_props.extend(node.metadata_props)


def _optional_input(node: onnx.NodeProto, index: int) -> Optional[str]:
    """An optional input's name, None when it is absent or given as ""."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _pair(where: str, name: str, values: Sequence[int]) -> tuple[int, int]:
    if len(values) != 2:
        raise DeformConvExportError(f"{where}: {name}: expected 2 values (h, w), got {list(values)}")
    return int(values[0]), int(values[1])


def _check_output_size(
    where: str,
    input_shape: StaticShape,
    offset_shape: StaticShape,
    kernel: Sequence[Optional[int]],
    strides: tuple[int, int],
    pads: Sequence[int],
    dilations: tuple[int, int],
) -> None:
    """The offset's (oh, ow) must be the output size the attributes give, where both are static."""
    if input_shape is None or offset_shape is None or len(offset_shape) != 4:
        return
    for axis in (0, 1):
        size, out, k = input_shape[2 + axis], offset_shape[2 + axis], kernel[axis]
        if size is None or out is None or k is None:
            continue
        expected = (size + pads[axis] + pads[axis + 2] - dilations[axis] * (k - 1) - 1) // strides[axis] + 1
        if out != expected:
            raise DeformConvExportError(
                f"{where}: the offset's {'height' if axis == 0 else 'width'} is {out}, but input size "
                f"{size}, pads {list(pads)}, strides {list(strides)} and dilations {list(dilations)} "
                f"give an output size of {expected}"
            )

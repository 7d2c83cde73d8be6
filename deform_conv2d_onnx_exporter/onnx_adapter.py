"""Adapter 3: the core emitted into a plain ONNX graph, in place of one deformable convolution node.

No torch here: values are tensor names, nodes are ``onnx.NodeProto``. Static shapes and element
types come from ONNX shape inference run on the model beforehand (see :mod:`.rewrite`).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .decomposition import deform_conv2d
from .emitter import Attribute, Emitter
from .forms import DeformConvNode, Role
from .lowering import LoweringOptions
from .params import DeformConvExportError, DeformConvParams, StaticShape, show_shape

#: What shape inference told about a tensor: (element type or None, shape or None).
TensorFacts = tuple[Optional[int], StaticShape]


class OnnxGraphEmitter(Emitter[str]):
    """Collects the nodes and constants that replace one DeformConv node.

    A node whose inputs are all constants (the model's initializers, such as the weight, or the
    core's own constants) is computed here and written as a constant, as the torch exporters
    fold it: some converters (onnx2tf) fail on a Reshape of an initializer. Constants stay NumPy
    arrays until :meth:`initializers` writes the ones the new nodes read: a weight folded through
    a Reshape and a Transpose then exists once in the model, not once per step.

    Args:
        opset: the default-domain opset of the model the nodes go into.
        facts: element type and shape of every tensor of the model, by name.
        fresh_name: returns an unused tensor or node name built from its argument.
        prefix: the start of every new node's name (the replaced node's name).
        initializers: the model's initializers that are not also graph inputs, by name.
        base_dir: the folder of the files of those that keep their data outside the model.
    """

    path = "rewrite"

    def __init__(
        self,
        opset: int,
        facts: dict[str, TensorFacts],
        fresh_name: Callable[[str], str],
        prefix: str,
        initializers: Mapping[str, onnx.TensorProto],
        base_dir: str = "",
    ) -> None:
        super().__init__(opset)
        self.nodes: list[onnx.NodeProto] = []
        self._base_dir = base_dir
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
        self._values[name] = array
        return name

    def initializers(self) -> list[onnx.TensorProto]:
        """The constants the new nodes read, as initializers (not those only folded into others)."""
        read = {name for node in self.nodes for name in node.input}
        return [numpy_helper.from_array(array, name) for name, array in self._values.items() if name in read]

    def _value(self, name: str) -> np.ndarray:
        """The value of a constant: one this emitter wrote, or one of the model's initializers."""
        if name in self._values:
            return self._values[name]
        return numpy_helper.to_array(self._model_constants[name], self._base_dir)

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


def params_of(found: DeformConvNode, facts: dict[str, TensorFacts]) -> DeformConvParams:
    """The parameters of a deformable convolution node, validated against the static shapes known.

    The pads are (h_begin, w_begin, h_end, w_end). The sampling grid depends only on the begin
    pads; the end pads only decide the output size, which the decomposition reads from the
    offset's (oh, ow), so they are checked against it where both are static.

    Raises:
        DeformConvExportError: naming the node and the attribute or input at fault.
    """
    where, tensors = found.where, found.tensors
    shapes = {role: facts.get(name, (None, None))[1] if name else None for role, name in tensors.items()}
    _check_types(where, tensors, facts)
    input_shape, weight_shape = shapes["input"], shapes["weight"]
    if input_shape is not None and len(input_shape) != 4:
        raise DeformConvExportError(
            f"{where}: only 2-D deformable convolution is supported (input of rank 4), got input "
            f"rank {len(input_shape)}"
        )
    if weight_shape is None or any(d is None for d in weight_shape):
        raise DeformConvExportError(
            f"{where}: the weight {tensors['weight']!r} needs a static shape (an initializer, or a "
            f"shape ONNX shape inference can compute), got {show_shape(weight_shape)}"
        )
    try:
        params = DeformConvParams.from_call(
            input_shape=input_shape,
            weight_shape=weight_shape,
            offset_shape=shapes["offset"],
            mask_shape=shapes["mask"],
            stride=found.strides,
            padding=(found.pads[0], found.pads[1]),
            dilation=found.dilations,
            groups=found.group,
            offset_groups=found.offset_group,
            use_mask=tensors["mask"] is not None,
        )
    except DeformConvExportError as error:
        raise DeformConvExportError(f"{where}: {error}") from error
    if found.kernel_shape is not None and found.kernel_shape != params.kernel:
        raise DeformConvExportError(
            f"{where}: kernel_shape={list(found.kernel_shape)} contradicts the weight's shape "
            f"{show_shape(weight_shape)}"
        )
    _check_bias(where, tensors["bias"], shapes["bias"], params.out_channels)
    _check_output_size(where, shapes, params, found.pads)
    return params


def _check_types(where: str, tensors: Mapping[Role, Optional[str]], facts: dict[str, TensorFacts]) -> None:
    """Every input has the input's element type, where shape inference knows both (ONNX's T)."""
    types = {role: facts.get(name, (None, None))[0] for role, name in tensors.items() if name}
    expected = types["input"]
    floats = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE)
    if expected is not None and expected not in floats:
        raise DeformConvExportError(
            f"{where}: input {tensors['input']!r}: expected a floating-point tensor (float16, bfloat16, "
            f"float, double), got {_type_name(expected)}"
        )
    for role, elem_type in types.items():
        if expected is not None and elem_type is not None and elem_type != expected:
            raise DeformConvExportError(
                f"{where}: {role} {tensors[role]!r}: expected the input's element type "
                f"{_type_name(expected)}, got {_type_name(elem_type)}"
            )


def _type_name(elem_type: int) -> str:
    return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _check_bias(where: str, name: Optional[str], shape: StaticShape, out_channels: int) -> None:
    if name is not None and shape is not None and list(shape) not in ([out_channels], [None]):
        raise DeformConvExportError(
            f"{where}: bias {name!r}: expected shape ({out_channels},) (out_channels), "
            f"got {show_shape(shape)}"
        )


def _check_output_size(
    where: str, shapes: Mapping[Role, StaticShape], params: DeformConvParams, pads: Sequence[int]
) -> None:
    """The offset's and the mask's (oh, ow) must be the output size the attributes give, where static."""
    input_shape = shapes["input"]
    if input_shape is None:
        return
    for axis in (0, 1):
        size, k = input_shape[2 + axis], params.kernel[axis]
        if size is None:
            continue
        extent = params.dilation[axis] * (k - 1) + 1
        expected = (size + pads[axis] + pads[axis + 2] - extent) // params.stride[axis] + 1
        for name in ("offset", "mask"):
            shape = shapes[name]
            out = None if shape is None else shape[2 + axis]
            if expected < 1 or (out is not None and out != expected):
                raise DeformConvExportError(
                    f"{where}: the {name}'s {'height' if axis == 0 else 'width'} is "
                    f"{'?' if out is None else out}, but input size {size}, pads {list(pads)}, strides "
                    f"{list(params.stride)} and dilations {list(params.dilation)} give an output size "
                    f"of {expected}{'' if expected >= 1 else ' (no output)'}"
                )


def replace_node(
    found: DeformConvNode,
    params: DeformConvParams,
    options: LoweringOptions,
    emitter: OnnxGraphEmitter,
) -> None:
    """Emit the decomposition of ``found`` into ``emitter``; its last node writes the node's output.

    The new nodes carry the replaced node's metadata (exporters keep the source location there).
    """
    node, tensors = found.node, found.tensors
    x, w, offset = (str(tensors[role]) for role in ("input", "weight", "offset"))
    out = deform_conv2d(emitter, params, options, x, w, offset, tensors["mask"], tensors["bias"])
    producer = next(n for n in reversed(emitter.nodes) if out in n.output)
    producer.output[list(producer.output).index(out)] = node.output[0]
    for new in emitter.nodes:
        new.metadata_props.extend(node.metadata_props)
        if new.op_type == "DeformConv":
            _keep_end_pads(new, found.pads)


def _keep_end_pads(deform_conv: onnx.NodeProto, pads: Sequence[int]) -> None:
    """Give the ``native`` lowering's DeformConv the node's own pads.

    The core writes torchvision's symmetric padding, (h, w, h, w) from the begin pads, which is
    all a decomposition needs (it reads the output size from the offset); DeformConv computes its
    output size from the pads, so asymmetric end pads must stay.
    """
    kept = [a for a in deform_conv.attribute if a.name != "pads"]
    del deform_conv.attribute[:]
    deform_conv.attribute.extend([*kept, helper.make_attribute("pads", list(pads))])
    deform_conv.attribute.sort(key=lambda attribute: attribute.name)

"""The small interface through which the core writes ONNX operators, and what every emitter shares.

Each adapter (TorchScript symbolic, ONNXScript function, plain ONNX graph) subclasses
:class:`Emitter` over its own value type and implements four primitives: one node, one constant,
and what it knows of a value's shape and element type. Everything the adapters have in common
lives here, once: how constants are normalised, how nodes are named, and the record of what was
emitted. The core calls only :meth:`Emitter.op`, :meth:`Emitter.constant`,
:meth:`Emitter.static_shape`, :meth:`Emitter.elem_type` and :meth:`Emitter.section`, so it knows
nothing of torch.onnx or onnxscript.
"""

from __future__ import annotations

import abc
import collections
import contextlib
from typing import ClassVar, Generic, Iterator, Optional, Sequence, TypeVar, Union

import numpy as np

#: A graph value of the adapter's own type (``torch._C.Value``, ``onnx_ir.Value``, a tensor name).
V = TypeVar("V")

#: Attribute values the core uses: ints (including ONNX dtype codes), floats, strings, int lists.
Attribute = Union[int, float, str, Sequence[int]]

#: What the emitters have done since the counter was last cleared: one count per emitter created,
#: under its :attr:`Emitter.path` (``legacy``, ``dynamo``, ``rewrite``), and one under ``native``
#: per ONNX DeformConv node written. The test suite reads it to report which paths it ran.
EMITTED: collections.Counter[str] = collections.Counter()

#: The section a node belongs to when the core names none.
_DEFAULT_SECTION = "deform_conv2d"


class Emitter(abc.ABC, Generic[V]):
    """Writes ONNX operators of the default domain into some graph.

    Attributes:
        opset: the ONNX opset the emitted nodes must be valid in (12 or higher).
        path: the adapter's name in :data:`EMITTED`.
    """

    path: ClassVar[str]

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self._section = _DEFAULT_SECTION
        EMITTED[self.path] += 1

    def op(self, op_type: str, *inputs: V, **attributes: Attribute) -> V:
        """Emit one single-output node ``op_type(*inputs, **attributes)`` and return its output.

        The node's name hint is ``<section>/<op_type>``; adapters that can name nodes use it.
        """
        if op_type == "DeformConv":
            EMITTED["native"] += 1
        return self._node(op_type, inputs, attributes, f"{self._section}/{op_type}")

    def constant(self, array: Union[np.ndarray, np.generic]) -> V:
        """Emit a constant tensor with the array's dtype and shape.

        A 0-d array stays a true scalar (ONNX's Range, for one, refuses a shape-(1,) tensor);
        ``np.ascontiguousarray`` would make it shape (1,).
        """
        return self._constant(np.array(array, order="C"))

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Name the nodes emitted inside the block ``<name>/<op_type>``: what part of the math they are."""
        outer, self._section = self._section, name
        try:
            yield
        finally:
            self._section = outer

    @abc.abstractmethod
    def _node(self, op_type: str, inputs: Sequence[V], attributes: dict[str, Attribute], name: str) -> V:
        """Write one node and return its only output; ``name`` is a hint, not necessarily unique."""

    @abc.abstractmethod
    def _constant(self, array: np.ndarray) -> V:
        """Write a constant holding ``array`` (C-ordered; a 0-d array is a scalar)."""

    def record_shape(self, value: V, dims: Sequence[Optional[int]]) -> None:
        """Note what the core knows of ``value``'s shape (None: a symbolic dimension), for
        adapters whose graphs hold shapes; the default keeps none."""

    @abc.abstractmethod
    def static_shape(self, value: V) -> Optional[Sequence[Optional[int]]]:
        """The value's shape as known at export time.

        Returns None when even the rank is unknown; an entry is None when that dimension is
        symbolic or unknown. Must never report a number for a dimension that can change.
        """

    @abc.abstractmethod
    def elem_type(self, value: V) -> Optional[int]:
        """The value's ONNX element type (``onnx.TensorProto.FLOAT`` ...), None if unknown."""

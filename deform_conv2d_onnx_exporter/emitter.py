"""The small interface through which the core writes ONNX operators.

Each adapter (TorchScript symbolic, ONNXScript function) implements :class:`Emitter` over its own
value type. The core only ever calls these four methods, so it knows nothing of torch.onnx or
onnxscript.
"""

from __future__ import annotations

import abc
from typing import Generic, Optional, Sequence, TypeVar, Union

import numpy as np

#: A graph value of the adapter's own type (``torch._C.Value``, ``onnxscript.ir.Value``, ...).
V = TypeVar("V")

#: Attribute values the core uses: ints (including ONNX dtype codes), floats, strings, int lists.
Attribute = Union[int, float, str, Sequence[int]]


class Emitter(abc.ABC, Generic[V]):
    """Writes ONNX operators of the default domain into some graph.

    Attributes:
        opset: the ONNX opset the emitted nodes must be valid in (12 or higher).
    """

    opset: int

    @abc.abstractmethod
    def op(self, op_type: str, *inputs: V, **attributes: Attribute) -> V:
        """Emit one single-output node ``op_type(*inputs, **attributes)`` and return its output."""

    @abc.abstractmethod
    def constant(self, array: np.ndarray) -> V:
        """Emit a constant tensor with the array's dtype and shape."""

    @abc.abstractmethod
    def static_shape(self, value: V) -> Optional[Sequence[Optional[int]]]:
        """The value's shape as known at export time.

        Returns None when even the rank is unknown; an entry is None when that dimension is
        symbolic or unknown. Must never report a number for a dimension that can change.
        """

    @abc.abstractmethod
    def elem_type(self, value: V) -> Optional[int]:
        """The value's ONNX element type (``onnx.TensorProto.FLOAT`` ...), None if unknown."""

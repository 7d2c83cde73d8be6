"""The small graph builder the lowerings write through: the call's sizes and constants.

:class:`Graph` wraps an :class:`~.emitter.Emitter` with what every part of the decomposition
(coordinates, sampling, the kernel product) needs: the call's sizes as Python ints when they are
static and as graph values when not, constants in the compute dtype, and reshapes that spell out
every dimension.
"""

from __future__ import annotations

import functools
from typing import Generic, Sequence, Union

import numpy as np
from onnx import TensorProto

from .emitter import Emitter, V
from .params import DeformConvParams

#: Rows/columns of zeros the gather lowerings add before and after the input: a corner of a
#: sample inside the window always lands in the padded image, and a sample moved to the padded
#: pixel (0, 0) reads zeros only (see :mod:`.coordinates`).
PAD_BEFORE = 2
PAD_AFTER = 1

#: Row indices past this do not fit in int32 (see :attr:`Graph.index_dtype`).
INT32_ROWS = 2**31

#: A dimension: a Python int when static, else a 1-D int64 graph value of length 1.
Dim = Union[int, V]

#: Where :meth:`Graph.size` reads each size: (B, C, H, W) of the input, (oh, ow) of the offset.
_SIZES = {"B": ("input", 0), "H": ("input", 2), "W": ("input", 3), "oh": ("offset", 2), "ow": ("offset", 3)}


class Graph(Generic[V]):
    """An emitter with the call's sizes and constant helpers, in one compute dtype.

    The static sizes of the input and the offset are read once, here; a size that is not static
    is read from the graph with Shape, once, and reused.

    Args:
        e: where the nodes go.
        dtype: the compute dtype, float32 or float64.
        input, offset: the call's own (B, C, H, W) and (B, og*K*2, oh, ow), before any cast: the
            emitter's static shapes of them, and Shape for the sizes that are not static.
    """

    def __init__(
        self,
        e: Emitter[V],
        dtype: type[np.floating],
        input: V,
        offset: V,
    ) -> None:
        self.e = e
        self.opset = e.opset
        self.dtype = dtype
        self.onnx_dtype = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
        self.section = e.section
        self.op = e.op
        self._sources = {"input": (input, e.static_shape(input)), "offset": (offset, e.static_shape(offset))}
        self._dims: dict[tuple[str, int], V] = {}
        #: The integer type of the gather lowerings' positions and row indices. int32 by default:
        #: onnxruntime-web's WebGPU provider has no int64 arithmetic and runs every int64 Add, Mul,
        #: comparison and Where on the CPU, and TensorRT and TFLite are int32 at heart. The gather
        #: lowerings set int64 when static sizes give more rows than int32 addresses (2^31 padded
        #: pixels times offset groups, at least 8 GiB of float32 input).
        self.index_dtype: type[np.signedinteger] = np.int32

    # Sizes are read on first use, so that a lowering that needs none (native) leaves no Shape
    # node behind. Every reshape spells out its dimensions: a Reshape that copies (0) or infers (-1)
    # a dimension fails on an empty batch, and some tools' shape inference cannot follow it.
    def size(self, name: str) -> Dim[V]:
        """B, H, W (the input's), oh or ow (the offset's): an int when static, else a (1,) value."""
        source, axis = _SIZES[name]
        return self._dim(source, axis)

    @functools.cached_property
    def positions(self) -> Dim[V]:
        """L = oh*ow, the number of output positions."""
        return self.product(self.size("oh"), self.size("ow"))

    def _dim(self, source: str, axis: int) -> Dim[V]:
        """A size of the input or the offset: an int when static, else a (1,) value read with Shape."""
        value, shape = self._sources[source]
        if shape is not None and len(shape) > axis and shape[axis] is not None:
            return int(shape[axis])  # type: ignore[arg-type]
        key = (source, axis)
        if key not in self._dims:
            self._dims[key] = self.op("Gather", self.op("Shape", value), self.int64([axis]), axis=0)
        return self._dims[key]

    def batch_indices(self) -> V:
        """0, 1, ..., B-1 as a (B,) value in :attr:`index_dtype`: a constant when the batch is static."""
        batch = self.size("B")
        if isinstance(batch, int):
            return self.indices(np.arange(batch))
        return self.op("Sub", self.counting(batch), self.indices(1))

    def counting(self, count: V) -> V:
        """1, 2, ..., n as an (n,) value in :attr:`index_dtype`, for a (1,) value ``count`` = n.

        A running sum of ones: Range would need n as a 0-d scalar, which some tools (ONNX Runtime's
        symbolic shape inference, tract) cannot follow from Shape.
        """
        counts = self.op("CumSum", self.op("Expand", self.indices(1), count), self.int64(0))  # (n,)
        if self.index_dtype == np.int64:
            return counts
        # ONNX's reference evaluator before 1.18 sums int32 into int64 (NumPy's cumsum upcasts)
        return self.op("Cast", counts, to=self.index_type)

    def samples(self, params: DeformConvParams, positions: Dim[V]) -> Dim[V]:
        """B*Lp*K*og, the number of bilinear samples at ``positions`` = Lp output positions."""
        return self.product(self.size("B"), positions, params.taps * params.offset_groups)

    def padded(self, size: Dim[V]) -> Dim[V]:
        """A size of the input after the gather lowerings' padding: H + 3 or W + 3."""
        extra = PAD_BEFORE + PAD_AFTER
        return size + extra if isinstance(size, int) else self.op("Add", size, self.int64([extra]))

    def product(self, *dims: Dim[V]) -> Dim[V]:
        """The product of dimensions: an int when all are static, else a (1,) value."""
        static = 1
        dynamic: list[V] = []
        for d in dims:
            if isinstance(d, int):
                static *= d
            else:
                dynamic.append(d)
        if not dynamic:
            return static
        out = dynamic[0]
        for d in dynamic[1:]:
            out = self.op("Mul", out, d)
        return out if static == 1 else self.op("Mul", out, self.int64([static]))

    def floats(self, value: Union[float, Sequence[float], np.ndarray]) -> V:
        """A constant in the compute dtype; a Python float becomes a 0-d scalar."""
        return self.e.constant(np.asarray(value, dtype=self.dtype))

    def int64(self, value: Union[int, Sequence[int], np.ndarray]) -> V:
        """An int64 constant; a Python int becomes a 0-d scalar."""
        return self.e.constant(np.asarray(value, dtype=np.int64))

    @property
    def index_type(self) -> int:
        """:attr:`index_dtype` as an ONNX element type."""
        return TensorProto.INT32 if self.index_dtype == np.int32 else TensorProto.INT64

    def indices(self, value: Union[int, Sequence[int], np.ndarray]) -> V:
        """A constant in :attr:`index_dtype`; a Python int becomes a 0-d scalar."""
        return self.e.constant(np.asarray(value, dtype=self.index_dtype))

    def as_index(self, dim: Dim[V]) -> V:
        """A dimension as a (1,) value in :attr:`index_dtype`, for arithmetic with row indices."""
        if isinstance(dim, int):
            return self.indices([dim])
        if self.index_dtype == np.int64:
            return dim
        return self.op("Cast", dim, to=self.index_type)

    def as_float(self, size: Dim[V]) -> V:
        """A size in the compute dtype.

        A symbolic size is counted, as the sum of that many ones, rather than cast: fp16
        converters retype the output of a ``Cast(to=FLOAT)`` but keep its ``to``, and the dynamo
        exporter's optimizer turns a CastLike into such a Cast.
        """
        if isinstance(size, int):
            return self.floats(float(size))
        return self.op("ReduceSum", self.op("Expand", self.floats(1.0), size), keepdims=1)

    def as_value(self, dim: Dim[V]) -> V:
        """A dimension as a graph value: a static one becomes a (1,) int64 constant."""
        return self.int64([dim]) if isinstance(dim, int) else dim

    def to_compute(self, value: V) -> V:
        """``value`` in the compute dtype, cast when it is not."""
        if self.e.elem_type(value) == self.onnx_dtype:
            return value
        return self.op("Cast", value, to=self.onnx_dtype)

    def shape(self, dims: Sequence[Dim[V]]) -> V:
        """A 1-D int64 shape tensor from ints and (1,) values."""
        if all(isinstance(d, int) for d in dims):
            return self.int64([int(d) for d in dims])  # type: ignore[arg-type]
        return self.op("Concat", *[self.as_value(d) for d in dims], axis=0)

    def reshape(self, value: V, dims: Sequence[Dim[V]]) -> V:
        """Reshape to ``dims``, whose entries are ints or (1,) values."""
        out = self.op("Reshape", value, self.shape(dims))
        self.e.record_shape(out, [d if isinstance(d, int) else None for d in dims])
        return out

    def slice(self, value: V, axis: int, first: int, last: int) -> V:
        """value[..., first:last, ...] along ``axis``."""
        return self.op("Slice", value, self.int64([first]), self.int64([last]), self.int64([axis]))

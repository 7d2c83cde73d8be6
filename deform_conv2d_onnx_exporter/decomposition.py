"""DCNv2 (torchvision's ``deform_conv2d``) described as standard ONNX operators.

The computation, for output position (oy, ox), kernel tap k = (i, j) and offset group g:

    p0 + pk = (oy*stride_h - pad_h + i*dil_h,  ox*stride_w - pad_w + j*dil_w)     regular grid
    p       = p0 + pk + dp_k                                                      dp from ``offset``
    col[c, k, oy, ox] = dm_k * bilinear(input[c], p)                              dm from ``mask``
    out[co, oy, ox]   = bias[co] + sum over c in group(co), k of weight[co, c, k] * col[c, k, oy, ox]

Coordinates are (y, x) in the frame of the *unpadded* input: pixel (0, 0) is input[..., 0, 0].
A sample is zero when y <= -1, y >= H, x <= -1 or x >= W; inside that window each of its four
corners that lies outside the image contributes zero.

Each lowering is written from three parts, each in a module of its own: where the samples are
(:mod:`.coordinates`), reading them (:mod:`.bilinear`) and the kernel product
(:mod:`.kernel_product`); this module puts them together, in slices of output positions when
the sizes are static. Every tensor has rank <= 4, so that 4-D-only runtimes (ncnn, TFLite, NPU
compilers) take the graph.

Shape names used in the comments: B batch, C input channels, og offset groups, Cg = C / og,
G groups, K = kh*kw taps, (oh, ow) output size, L = oh*ow, Lp the output positions of one slice,
Hp = H + 3, Wp = W + 3, N = B*L*K*og samples.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional

import numpy as np
from onnx import TensorProto

from . import bilinear
from .bilinear import CornerReader
from .coordinates import corner_rows, normalised_grid
from .emitter import Emitter, V
from .graph_builder import INT32_ROWS, Dim, Graph
from .kernel_product import (
    channels_last_kernel,
    kernel_times_channels_last,
    kernel_times_columns,
    plus_bias,
)
from .lowering import Lowering, LoweringOptions
from .params import DeformConvExportError, DeformConvParams
from .schema import DeformConv2dCall

_FLOAT_TYPES: dict[int, type[np.floating]] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    # Half-precision inputs are computed in float32, as torch computes them on the CPU.
    TensorProto.FLOAT16: np.float32,
    TensorProto.BFLOAT16: np.float32,
}


@dataclass(frozen=True)
class Operands(Generic[V]):
    """The call's tensors, in the compute dtype.

    Attributes:
        input: (B, C, H, W).
        weight: (Cout, C / G, kh, kw).
        offset: (B, og*K*2, oh, ow), channels laid out (og, kh, kw, [dy, dx]).
        mask: (B, og*K, oh, ow), channels laid out (og, kh, kw); None for DCNv1.
        bias: (Cout,) or None.
    """

    input: V
    weight: V
    offset: V
    mask: Optional[V]
    bias: Optional[V]


def emit_call(e: Emitter[V], options: LoweringOptions, call: DeformConv2dCall[V]) -> V:
    """Emit one ``torchvision::deform_conv2d`` call, as the torch exporters hand it over.

    Validates the call against the static shapes the emitter knows, then emits
    :func:`deform_conv2d`. The mask is a dummy when ``use_mask`` is False and is then not read.

    Raises:
        DeformConvExportError: for a call that cannot be exported correctly.
    """
    params = DeformConvParams.from_call(
        input_shape=e.static_shape(call.input),
        weight_shape=e.static_shape(call.weight),
        offset_shape=e.static_shape(call.offset),
        mask_shape=e.static_shape(call.mask),
        stride=call.pair("stride"),
        padding=call.pair("pad"),
        dilation=call.pair("dilation"),
        groups=call.constants["groups"],
        offset_groups=call.constants["offset_groups"],
        use_mask=call.constants["use_mask"],
    )
    return deform_conv2d(e, params, options, call.input, call.weight, call.offset, call.mask, call.bias)


def deform_conv2d(
    e: Emitter[V],
    params: DeformConvParams,
    options: LoweringOptions,
    input: V,
    weight: V,
    offset: V,
    mask: Optional[V],
    bias: Optional[V],
) -> V:
    """Emit the graph of ``torchvision::deform_conv2d`` and return its output.

    Args:
        e: where the nodes go.
        params: the validated call parameters.
        options: the lowering.
        input: (B, C, H, W).
        weight: (Cout, C / G, kh, kw).
        offset: (B, og*K*2, oh, ow), channels laid out (og, kh, kw, [dy, dx]).
        mask: (B, og*K, oh, ow), channels laid out (og, kh, kw); read only if ``params.use_mask``.
        bias: (Cout,) or None.

    Returns:
        (B, Cout, oh, ow), in the input's dtype.
    """
    in_type = _float_type(e.elem_type(input))
    graph = Graph(e, _FLOAT_TYPES[in_type], input, offset)
    if params.use_mask and mask is None:
        raise DeformConvExportError("mask: use_mask is True but no mask tensor was given")
    lowering = options.resolve(e.opset)
    operands = Operands(
        graph.to_compute(input),
        graph.to_compute(weight),
        graph.to_compute(offset),
        graph.to_compute(mask) if params.use_mask and mask is not None else None,
        None if bias is None else graph.to_compute(bias),
    )
    out = _LOWERINGS[lowering](graph, params, operands)
    if in_type != graph.onnx_dtype:
        out = e.op("Cast", out, to=in_type)
    return out


def _float_type(elem_type: Optional[int]) -> int:
    """The input's element type, refused unless it is a floating-point type the core computes in."""
    if elem_type is None:
        raise DeformConvExportError(
            "input: the element type must be known at export time, got an unknown dtype"
        )
    if elem_type not in _FLOAT_TYPES:
        name = TensorProto.DataType.Name(elem_type).lower()
        raise DeformConvExportError(
            f"input: expected a floating-point tensor (float16, bfloat16, float32, float64), got {name}"
        )
    return elem_type


# --- native ---------------------------------------------------------------------------------------


def _native(graph: Graph[V], params: DeformConvParams, tensors: Operands[V]) -> V:
    """ONNX DeformConv, whose attributes and input layouts are torchvision's."""
    inputs = [tensors.input, tensors.weight, tensors.offset]
    if tensors.bias is not None or tensors.mask is not None:
        inputs.append(
            tensors.bias if tensors.bias is not None else graph.floats(np.zeros(params.out_channels))
        )
    if tensors.mask is not None:
        inputs.append(tensors.mask)
    (pad_h, pad_w), (kh, kw) = params.padding, params.kernel
    return graph.op(
        "DeformConv",
        *inputs,
        dilations=list(params.dilation),
        group=params.groups,
        kernel_shape=[kh, kw],
        offset_group=params.offset_groups,
        pads=[pad_h, pad_w, pad_h, pad_w],
        strides=list(params.stride),
    )


# --- grid_sample ----------------------------------------------------------------------------------


def _grid_sample(portable: bool, graph: Graph[V], params: DeformConvParams, tensors: Operands[V]) -> V:
    """Bilinear samples of every channel by ONNX GridSample (opset >= 16), then the kernel.

    GridSample with zero padding gives each corner outside the image the value zero, which is
    torchvision's rule; a sample outside the window has all four corners outside and so is zero,
    as torchvision's explicit test makes it (for finite inputs: GridSample still multiplies an
    Inf or NaN pixel by a zero weight at the window's very edge).

    ``grid_sample`` samples the images of all offset groups in one GridSample, as a batch of
    B*og images, and computes large problems with static sizes in slices of output positions (see
    :func:`_position_slices`). ``grid_sample_ncnn`` (``portable``) keeps the batch on the first
    axis of every tensor, for runtimes that have no batch and read a 4-D tensor's first axis as
    it (ncnn): one GridSample per offset group, whose columns are concatenated along channels.
    """
    og, cg, taps = params.offset_groups, params.channels_per_offset_group, params.taps
    batch = graph.size("B")
    with graph.section("coordinates"):
        grid = normalised_grid(graph, params, tensors.offset, portable)  # (B*og, K, L, 2) | (B, og*K, 2, L)
    with graph.section("sampling"):
        mask = tensors.mask
        if portable:
            image = tensors.input  # (B, C, H, W)
            if mask is not None:
                mask = graph.reshape(mask, [batch, og, taps, graph.positions])  # (B, og, K, L)
        else:
            images = graph.product(batch, og)
            image = graph.reshape(tensors.input, [images, cg, graph.size("H"), graph.size("W")])
            if mask is not None:
                mask = graph.reshape(mask, [images, 1, taps, graph.positions])  # (B*og, 1, K, L)
    if portable:
        with graph.section("sampling"):
            columns = bilinear.grid_sample_each_offset_group(graph, params, image, grid, mask)  # (B, C, K, L)
        with graph.section("convolution"):
            out = kernel_times_columns(graph, params, columns, tensors.weight, graph.positions)
    else:
        columns_bytes = params.in_channels * params.taps * np.dtype(graph.dtype).itemsize

        def convolved(part: V, part_mask: Optional[V], positions: Dim[V]) -> V:
            with graph.section("sampling"):
                sampled = bilinear.grid_sample(graph, image, part, part_mask)  # (B*og, Cg, K, Lp)
            with graph.section("convolution"):
                return kernel_times_columns(graph, params, sampled, tensors.weight, positions)

        def one_slice(first: int, last: int) -> V:
            part = graph.slice(grid, 2, first, last)  # (B*og, K, Lp, 2)
            part_mask = None if mask is None else graph.slice(mask, 3, first, last)  # (B*og, 1, K, Lp)
            return convolved(part, part_mask, last - first)

        def whole() -> V:
            return convolved(grid, mask, graph.positions)

        out = _by_slices(graph, params, columns_bytes, axis=3, one_slice=one_slice, whole=whole)
    with graph.section("convolution"):  # out: (B, G, Cout/G, L)
        out = graph.reshape(out, [batch, params.out_channels, graph.size("oh"), graph.size("ow")])
    return plus_bias(graph, params, out, tensors.bias)


# --- gather_rows, gathernd, gatherelements ---------------------------------------------------------


def _gather(reader: CornerReader[V], graph: Graph[V], params: DeformConvParams, tensors: Operands[V]) -> V:
    """Bilinear sampling by gathering the four corners of every sample, then the kernel.

    The positions are integers (:func:`.coordinates.corner_rows`), so the result does not depend
    on the float type the graph is later converted to. The corners are read as channel vectors
    from a channels-last copy of the padded input, so the columns come out channels-last,
    (B, L, K*C), and the kernel is reordered once to (K*C, Cout) instead of transposing the
    (much larger) columns. With static sizes the output positions are computed in slices: each
    slice's four corners, (B*Lp*K*og, 4, Cg), are still in the cache when they are weighted and
    the kernel reads them, and are never all in memory at once.
    """
    # int32 indices unless static sizes give more rows than they address (README, "Limits": with
    # symbolic sizes the rows must stay within int32 at run time). The rows are counted only when
    # every size they depend on is static: with a symbolic one, rows_addressed would write nodes
    # that nothing reads.
    counted = ("H", "W") if reader.per_image else ("B", "H", "W")
    if all(isinstance(graph.size(name), int) for name in counted):
        if reader.rows_addressed(graph, params) > INT32_ROWS:  # type: ignore[operator]
            graph.index_dtype = np.int64
    with graph.section("coordinates"):
        index, corner_weight = corner_rows(
            graph, params, tensors.offset, tensors.mask
        )  # (B, L, K*og, 4) each
    with graph.section("sampling"):
        table = reader.table(graph, params, tensors.input)
        index = reader.rows_of_each_image(graph, params, index)
    with graph.section("convolution"):
        kernel = channels_last_kernel(graph, params, tensors.weight)

    def columns(part: V, weight: V, positions: Dim[V]) -> V:
        with graph.section("sampling"):
            corners = reader.read(graph, params, table, part, positions)  # (B*Lp*K*og, 4, Cg)
            weight = graph.reshape(weight, [graph.samples(params, positions), 1, 4])
            samples = graph.op("MatMul", weight, corners)  # (B*Lp*K*og, 1, Cg)
        with graph.section("convolution"):
            out = kernel_times_channels_last(graph, params, samples, kernel, positions)  # (B*Lp, Cout)
            return graph.reshape(out, [graph.size("B"), positions, params.out_channels])

    corners_bytes = 4 * params.in_channels * params.taps * np.dtype(graph.dtype).itemsize
    out = _by_slices(
        graph,
        params,
        corners_bytes,
        axis=1,
        one_slice=lambda first, last: columns(
            graph.slice(index, 1, first, last), graph.slice(corner_weight, 1, first, last), last - first
        ),
        whole=lambda: columns(index, corner_weight, graph.positions),
    )
    with graph.section("convolution"):  # out: (B, L, Cout)
        # channels-last image first, then the Transpose to NCHW that layout-tracking converters
        # know: onnx2tf 2.6 takes a (B, Cout, oh, ow) Reshape with Cout = oh = ow for channels-last
        out = graph.reshape(out, [graph.size("B"), graph.size("oh"), graph.size("ow"), params.out_channels])
        out = graph.op("Transpose", out, perm=[0, 3, 1, 2])  # (B, Cout, oh, ow)
    return plus_bias(graph, params, out, tensors.bias)


# --- slices of output positions --------------------------------------------------------------------

#: The size one slice's largest intermediate (GridSample's columns, or the gathered corners) aims
#: at: written by one operator and read by the next two, it runs fastest while it fits in a core's
#: L2 cache (measured with ONNX Runtime 1.32 on a 2 MiB L2; benchmarks/bench.py).
_SLICE_BYTES = 2 * 1024 * 1024
#: Fewest output positions in a slice: fewer make the kernel's MatMul too thin to run at speed.
_SLICE_MIN_POSITIONS = 64
#: Most slices: each adds a few nodes, and the gain levels off well before.
_SLICE_MAX = 48


def _by_slices(
    graph: Graph[V],
    params: DeformConvParams,
    bytes_per_position: int,
    axis: int,
    one_slice: Callable[[int, int], V],
    whole: Callable[[], V],
) -> V:
    """``whole()``, or ``one_slice(first, last)`` for each range of :func:`_position_slices`,
    concatenated along ``axis``, the output positions' axis of what they return."""
    slices = _position_slices(graph, params, bytes_per_position)
    if not slices:
        return whole()
    outs = [one_slice(first, last) for first, last in slices]
    with graph.section("convolution"):
        return graph.op("Concat", *outs, axis=axis)


def _position_slices(
    graph: Graph[V], params: DeformConvParams, bytes_per_position: int
) -> list[tuple[int, int]]:
    """Ranges [first, last) of output positions that a lowering computes one at a time.

    Each slice's largest intermediate, ``bytes_per_position`` per image and output position,
    aims at :data:`_SLICE_BYTES`, and at no less than the kernel, which every slice reads again.
    The number of positions must be static; with an unknown batch one image counts.

    Returns:
        The ranges, in order; none when all positions are computed at once.
    """
    positions = graph.positions
    if not isinstance(positions, int):
        return []
    size = graph.size("B")
    batch = size if isinstance(size, int) else 1
    item = np.dtype(graph.dtype).itemsize
    kernel = params.out_channels * params.channels_per_group * params.taps * item
    count = round(batch * positions * bytes_per_position / max(_SLICE_BYTES, kernel))
    count = max(1, min(count, positions // _SLICE_MIN_POSITIONS, _SLICE_MAX))
    if count == 1:
        return []
    bounds = [positions * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


#: The core's lowerings: each writes the whole call, bias included, in the compute dtype.
_LOWERINGS: dict[Lowering, Callable[[Graph[Any], DeformConvParams, Operands[Any]], Any]] = {
    "grid_sample": functools.partial(_grid_sample, False),
    "grid_sample_ncnn": functools.partial(_grid_sample, True),
    "gather_rows": functools.partial(_gather, bilinear.GATHER_ROWS),
    "gathernd": functools.partial(_gather, bilinear.GATHERND),
    "gatherelements": functools.partial(_gather, bilinear.GATHERELEMENTS),
    "native": _native,
}

"""DCNv2 (torchvision's ``deform_conv2d``) described as standard ONNX operators.

The computation, for output position (oy, ox), kernel tap k = (i, j) and offset group g:

    p0 + pk = (oy*stride_h - pad_h + i*dil_h,  ox*stride_w - pad_w + j*dil_w)     regular grid
    p       = p0 + pk + dp_k                                                      dp from ``offset``
    col[c, k, oy, ox] = dm_k * bilinear(input[c], p)                              dm from ``mask``
    out[co, oy, ox]   = bias[co] + sum over c in group(co), k of weight[co, c, k] * col[c, k, oy, ox]

Coordinates are (y, x) in the frame of the *unpadded* input: pixel (0, 0) is input[..., 0, 0].
A sample is zero when y <= -1, y >= H, x <= -1 or x >= W; inside that window each of its four
corners that lies outside the image contributes zero. The gather lowerings read those corners
without per-corner tests: the input is zero-padded by 2 rows/columns before (top, left) and 1
after (bottom, right), so every corner of an in-window sample lands inside the padded image, and
a sample outside the window is moved to (-2, -2), whose four corners are all padding, so it reads
exact zeros (even where the input holds Inf or NaN). GridSample applies the same rule itself.

Every tensor has rank <= 4, so that 4-D-only runtimes (ncnn, TFLite, NPU compilers) take the
graph; static sizes become constants computed here rather than arithmetic on shapes.

Shape names used in the comments: B batch, C input channels, og offset groups, Cg = C / og,
G groups, K = kh*kw taps, (oh, ow) output size, L = oh*ow, Hp = H + 3, Wp = W + 3,
N = B*L*K*og samples.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, Sequence, Union

import numpy as np
from onnx import TensorProto

from .emitter import Emitter, V
from .lowering import Lowering, LoweringOptions
from .params import DeformConvExportError, DeformConvParams
from .schema import DeformConv2dCall

#: Rows/columns of zeros added before and after the input; see the module docstring.
_PAD_BEFORE = 2
_PAD_AFTER = 1
#: Where samples outside the window are moved: all four corners fall in the padding.
_OUTSIDE = -float(_PAD_BEFORE)
#: GridSample coordinates (normalised to [-1, 1] over the image) beyond this are far outside.
_GRID_LIMIT = 3.0

_FLOAT_TYPES: dict[int, type[np.floating]] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    # Half-precision inputs are sampled in float32: fp16 cannot even hold the pixel
    # coordinates of a wide image exactly (its spacing is 0.5 above 1024).
    TensorProto.FLOAT16: np.float32,
    TensorProto.BFLOAT16: np.float32,
}

#: A dimension: a Python int when static, else a 1-D int64 graph value of length 1.
Dim = Union[int, V]

#: Where :meth:`_Graph.size` reads each size: (B, C, H, W) of the input, (oh, ow) of the offset.
_SIZES = {"B": ("input", 0), "H": ("input", 2), "W": ("input", 3), "oh": ("offset", 2), "ow": ("offset", 3)}


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
    graph = _Graph(e, _FLOAT_TYPES[in_type], input, offset)
    if params.use_mask and mask is None:
        raise DeformConvExportError("mask: use_mask is True but no mask tensor was given")
    lowering = options.resolve(e.opset, graph.onnx_dtype)
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


def _native(graph: _Graph[V], params: DeformConvParams, tensors: Operands[V]) -> V:
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


def _grid_sample(portable: bool, graph: _Graph[V], params: DeformConvParams, tensors: Operands[V]) -> V:
    """Bilinear samples of every channel by ONNX GridSample (opset >= 16), then the kernel.

    GridSample with zero padding gives each corner outside the image the value zero, which is
    torchvision's rule; a sample outside the window has all four corners outside and so is zero,
    as torchvision's explicit test makes it (for finite inputs: GridSample still multiplies an
    Inf or NaN pixel by a zero weight at the window's very edge).

    ``grid_sample`` samples the images of all offset groups in one GridSample, as a batch of
    B*og images, and computes large problems with static sizes in slices of output positions (see
    :func:`_position_slices`), so that each slice's columns are still in the cache when the mask
    and the kernel read them. ``grid_sample_ncnn`` (``portable``) keeps the batch on the first
    axis of every tensor, for runtimes that have no batch and read a 4-D tensor's first axis as
    it (ncnn): one GridSample per offset group, whose columns are concatenated along channels.
    """
    og, cg, taps = params.offset_groups, params.channels_per_offset_group, params.taps
    batch = graph.size("B")
    with graph.section("coordinates"):
        grid = _normalised_grid(graph, params, tensors.offset, portable)  # (B*og, K, L, 2) | (B, og*K, L, 2)
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
    slices = [] if portable else _position_slices(graph, params)
    pieces: list[Optional[tuple[int, int]]] = [*slices] if slices else [None]
    outs = []
    for bounds in pieces:
        with graph.section("sampling"):
            if bounds is None:
                if portable:
                    columns = _sample_each_offset_group(graph, params, image, grid, mask)  # (B, C, K, L)
                else:
                    columns = _sample(graph, image, grid, mask)  # (B*og, Cg, K, L)
                positions = graph.positions
            else:
                first, last = bounds
                part = _slice(graph, grid, 2, first, last)  # (B*og, K, Lp, 2)
                part_mask = None if mask is None else _slice(graph, mask, 3, first, last)  # (B*og, 1, K, Lp)
                columns, positions = _sample(graph, image, part, part_mask), last - first
        with graph.section("convolution"):
            outs.append(_kernel_times_columns(graph, params, columns, tensors.weight, positions))
    with graph.section("convolution"):
        out = outs[0] if len(outs) == 1 else graph.op("Concat", *outs, axis=3)  # (B, G, Cout/G, L)
        out = graph.reshape(out, [batch, params.out_channels, graph.size("oh"), graph.size("ow")])
    return _plus_bias(graph, params, out, tensors.bias)


def _sample_each_offset_group(
    graph: _Graph[V], params: DeformConvParams, image: V, grid: V, mask: Optional[V]
) -> V:
    """grid_sample_ncnn's sampling: one GridSample per offset group, the columns concatenated.

    Args:
        image: (B, C, H, W).
        grid: (B, og*K, L, 2).
        mask: (B, og, K, L) or None.

    Returns:
        (B, C, K, L).
    """
    og, cg, taps = params.offset_groups, params.channels_per_offset_group, params.taps
    if og == 1:
        return _sample(graph, image, grid, mask)
    columns = [
        _sample(
            graph,
            _slice(graph, image, 1, group * cg, (group + 1) * cg),
            _slice(graph, grid, 1, group * taps, (group + 1) * taps),
            None if mask is None else _slice(graph, mask, 1, group, group + 1),
        )
        for group in range(og)
    ]
    return graph.op("Concat", *columns, axis=1)


def _sample(graph: _Graph[V], image: V, grid: V, mask: Optional[V]) -> V:
    """GridSample's bilinear samples of ``image`` at ``grid``, times the mask.

    Args:
        image: (N, Cs, H, W).
        grid: (N, K, Lp, 2), (x, y) normalised.
        mask: (N, 1, K, Lp) or None.

    Returns:
        (N, Cs, K, Lp).
    """
    # GridSample-20 renamed the mode "bilinear" to "linear".
    mode = "linear" if graph.opset >= 20 else "bilinear"
    columns = graph.op("GridSample", image, grid, mode=mode, padding_mode="zeros", align_corners=0)
    return columns if mask is None else graph.op("Mul", columns, mask)


#: The size the sampled columns of one slice of output positions aim at: they are written by
#: GridSample, then read by the mask's Mul and the kernel's MatMul, and run fastest while they fit
#: in a core's L2 cache (measured with ONNX Runtime 1.32 on a 2 MiB L2; benchmarks/bench.py).
_SLICE_BYTES = 2 * 1024 * 1024
#: Fewest output positions in a slice: fewer make the kernel's MatMul too thin to run at speed.
_SLICE_MIN_POSITIONS = 64
#: Most slices: each adds a few nodes, and the gain levels off well before.
_SLICE_MAX = 48


def _position_slices(graph: _Graph[V], params: DeformConvParams) -> list[tuple[int, int]]:
    """Ranges [first, last) of output positions that :func:`_grid_sample` computes one at a time.

    Each slice's columns, (B, C*K, Lp), aim at :data:`_SLICE_BYTES`, and at no less than the
    kernel, which every slice reads again. The number of positions must be static; with an
    unknown batch the size of one image's columns counts.

    Returns:
        The ranges, in order; none when all positions are computed at once.
    """
    positions = graph.positions
    if not isinstance(positions, int):
        return []
    size = graph.size("B")
    batch = size if isinstance(size, int) else 1
    item = np.dtype(graph.dtype).itemsize
    columns = batch * params.in_channels * params.taps * positions * item
    kernel = params.out_channels * params.channels_per_group * params.taps * item
    count = round(columns / max(_SLICE_BYTES, kernel))
    count = max(1, min(count, positions // _SLICE_MIN_POSITIONS, _SLICE_MAX))
    if count == 1:
        return []
    bounds = [positions * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _slice(graph: _Graph[V], value: V, axis: int, first: int, last: int) -> V:
    """value[..., first:last, ...] along ``axis``."""
    return graph.op("Slice", value, graph.int64([first]), graph.int64([last]), graph.int64([axis]))


def _normalised_grid(graph: _Graph[V], params: DeformConvParams, offset: V, portable: bool) -> V:
    """GridSample's grid: (x, y) of every sample, normalised so that -1 and 1 are the outer edges
    of the border pixels (align_corners=0):

        x_norm = (2x + 1) / W - 1 = dx * 2/W + ((2 (p0 + pk) + 1) / W - 1)

    and y_norm likewise over H. Coordinates that are huge or infinite are moved to +-3, far
    outside; so are NaN ones, except in the ``portable`` form, which has no comparison (ncnn has
    none) and leaves them NaN: GridSample then reads what its runtime reads for NaN. The
    arithmetic runs with the positions last, (.., 1, L) and (.., 2, L); one Transpose at the end
    puts (x, y) last, as GridSample reads them. (ONNX Runtime's elementwise kernels are an order
    of magnitude slower on tensors whose last axis has size 1 or 2.)

    Args:
        offset: (B, og*K*2, oh, ow).
        portable: the batch first, offset groups beside the taps.

    Returns:
        (B*og, K, L, 2), or (B, og*K, L, 2) if ``portable``.
    """
    og, taps, positions = params.offset_groups, params.taps, graph.positions
    # offset: (B, og*K*2, oh, ow) -> (B*og, K, 2, L), or (B, og*K, 2, L)
    images, rows = (graph.size("B"), og * taps) if portable else (graph.product(graph.size("B"), og), taps)
    offset = graph.reshape(offset, [images, rows, 2, positions])
    repeats = rows // taps  # the base, (1, K, 1, L), repeated for every offset group in the rows
    coordinates = []
    for axis, size in ((1, graph.size("W")), (0, graph.size("H"))):  # x, then y: GridSample's order
        # a Slice, not a Gather of index [axis]: pnnx drops the gathered axis
        delta = _slice(graph, offset, 2, axis, axis + 1)  # (B*og, K, 1, L) | (B, og*K, 1, L)
        # scale 2/W and base (2 (p0 + pk) + 1) / W - 1, the latter (1, K, 1, L)
        static = _static_regular_grid(graph, params, axis, taps_first=True)
        if static is not None and isinstance(size, int):
            scale = graph.floats(2.0 / size)
            base_value = graph.floats(np.tile((2.0 * static + 1.0) / size - 1.0, (1, repeats, 1, 1)))
        else:
            float_size = graph.as_float(size)
            scale = graph.op("Div", graph.floats(2.0), float_size)
            regular = _regular_grid(graph, params, axis, taps_first=True)
            doubled = graph.op("Add", graph.op("Mul", regular, graph.floats(2.0)), graph.floats(1.0))
            base_value = graph.op("Sub", graph.op("Div", doubled, float_size), graph.floats(1.0))
            if repeats > 1:
                base_value = graph.op("Concat", *[base_value] * repeats, axis=1)
        coordinates.append(graph.op("Add", graph.op("Mul", delta, scale), base_value))
    grid = graph.op("Concat", *coordinates, axis=2)  # (B*og, K, 2, L) | (B, og*K, 2, L)
    # GridSample turns a huge, infinite or NaN coordinate into an out-of-range integer and then
    # reads some pixel. |x_norm| >= 3 is far outside the image whatever its size, so such
    # coordinates (and NaN, for which the test is false) are set to -3: outside, read as zero.
    # The portable form clamps them to +-3 instead, with no comparison; a NaN stays NaN.
    if portable:
        grid = graph.op("Clip", grid, graph.floats(-_GRID_LIMIT), graph.floats(_GRID_LIMIT))
    else:
        within = graph.op("Less", graph.op("Abs", grid), graph.floats(_GRID_LIMIT))
        grid = graph.op("Where", within, grid, graph.floats(-_GRID_LIMIT))
    return graph.op("Transpose", grid, perm=[0, 1, 3, 2])  # (B*og, K, L, 2) | (B, og*K, L, 2)


def _kernel_times_columns(
    graph: _Graph[V], params: DeformConvParams, columns: V, weight: V, positions: Dim[V]
) -> V:
    """The grouped 1x1 product of the kernel with the sampled columns.

    Args:
        columns: (B*og, Cg, K, Lp); its memory order is (B, C, K, Lp) = (B, G, C/G*K, Lp).
        weight: (Cout, C/G, kh, kw).
        positions: Lp, the output positions in ``columns``.

    Returns:
        (B, G, Cout/G, Lp), without bias.
    """
    groups, cout = params.groups, params.out_channels
    reduced = params.channels_per_group * params.taps
    columns = graph.reshape(columns, [graph.size("B"), groups, reduced, positions])  # (B, G, C/G*K, Lp)
    kernel = graph.reshape(weight, [groups, cout // groups, reduced])  # (G, Cout/G, C/G*K)
    return graph.op("MatMul", kernel, columns)  # (B, G, Cout/G, Lp)


# --- gather_rows, gathernd, gatherelements ---------------------------------------------------------

#: Reads the four corners of every sample: (graph, params, input, corner index) -> (N, 4, Cg).
CornerReader = Callable[["_Graph[V]", DeformConvParams, V, V], V]


def _gather(
    read_corners: CornerReader[V], graph: _Graph[V], params: DeformConvParams, tensors: Operands[V]
) -> V:
    """Bilinear sampling by gathering the four corners of every sample, then the kernel.

    The corners are read as channel vectors from a channels-last copy of the padded input, so
    the columns come out channels-last, (B, L, K*C), and the kernel is reordered once to
    (K*C, Cout) instead of transposing the (much larger) columns.
    """
    with graph.section("coordinates"):
        y, x = _sampling_points(graph, params, tensors.offset)  # (B, L, K*og) each
        y, x = _move_outside_samples(graph, y, x)
        modulation = None if tensors.mask is None else _modulation(graph, params, tensors.mask)
        index, corner_weight = _bilinear_corners(graph, params, y, x, modulation)  # (B, L, K*og, 4) each
    with graph.section("sampling"):
        corners = read_corners(graph, params, tensors.input, index)  # (N, 4, Cg)
        samples = graph.op("MatMul", graph.reshape(corner_weight, [graph.samples(params), 1, 4]), corners)
        # samples: (N, 1, Cg); memory order (B, L, K, og, Cg) = (B, L, K, C)
    with graph.section("convolution"):
        out = _kernel_times_channels_last(graph, params, samples, tensors.weight)
    return _plus_bias(graph, params, out, tensors.bias)


def _sampling_points(graph: _Graph[V], params: DeformConvParams, offset: V) -> tuple[V, V]:
    """p = p0 + pk + dp, in unpadded input pixels.

    Args:
        offset: (B, og*K*2, oh, ow).

    Returns:
        (y, x), each (B, L, K*og): taps before offset groups, as the kernel reads channels. The
        last axis is not og alone: ONNX Runtime's elementwise kernels are an order of magnitude
        slower on a tensor whose last axis has size 1 (og = 1), and the rest of the coordinate
        arithmetic runs on these.
    """
    og, taps, positions = params.offset_groups, params.taps, graph.positions
    # offset: (B, og*K*2, oh, ow) -> (B, og, K*2, L) -> (B, L, K*2, og)
    offset = graph.reshape(offset, [graph.size("B"), og, taps * 2, positions])
    offset = graph.op("Transpose", offset, perm=[0, 3, 2, 1])
    points = []
    for axis in (0, 1):  # y, then x
        # delta: every second row of K*2, (B, L, K, og)
        delta = graph.op(
            "Slice", offset, graph.int64([axis]), graph.int64([2 * taps]), graph.int64([2]), graph.int64([2])
        )
        regular = _regular_grid(graph, params, axis, taps_first=False)  # (1, L, K, 1)
        point = graph.op("Add", delta, regular)  # (B, L, K, og)
        points.append(graph.reshape(point, [graph.size("B"), positions, taps * og]))
    return points[0], points[1]


def _modulation(graph: _Graph[V], params: DeformConvParams, mask: V) -> V:
    """dm: (B, og*K, oh, ow) -> (B, og, K, L) -> (B, L, K, og) -> (B, L, K*og)."""
    og, taps = params.offset_groups, params.taps
    mask = graph.reshape(mask, [graph.size("B"), og, taps, graph.positions])
    mask = graph.op("Transpose", mask, perm=[0, 3, 2, 1])
    return graph.reshape(mask, [graph.size("B"), graph.positions, taps * og])


def _move_outside_samples(graph: _Graph[V], y: V, x: V) -> tuple[V, V]:
    """Samples outside the window (y <= -1, y >= H, x <= -1, x >= W, or NaN) moved to (-2, -2).

    There all four corners are in the padding, so every gather reads zeros for them.

    Args:
        y, x: (B, L, K*og), unpadded frame.

    Returns:
        (y, x), the same shapes.
    """
    minus_one = graph.floats(-1.0)
    height, width = graph.as_float(graph.size("H")), graph.as_float(graph.size("W"))
    inside = graph.op(
        "And",
        graph.op("And", graph.op("Greater", y, minus_one), graph.op("Less", y, height)),
        graph.op("And", graph.op("Greater", x, minus_one), graph.op("Less", x, width)),
    )
    outside = graph.floats(_OUTSIDE)
    return graph.op("Where", inside, y, outside), graph.op("Where", inside, x, outside)


def _bilinear_corners(
    graph: _Graph[V], params: DeformConvParams, y: V, x: V, modulation: Optional[V]
) -> tuple[V, V]:
    """The four corners of every sample, as rows of :func:`_pixel_rows`, and their weights.

    Args:
        y, x: (B, L, K*og), unpadded frame, inside the window or at (-2, -2).
        modulation: (B, L, K*og) or None.

    Returns:
        index: (B, L, K*og, 4) int64, the row within its image of each corner, corners ordered
            (y0, x0), (y0, x1), (y1, x0), (y1, x1).
        weight: (B, L, K*og, 4), bilinear weight times modulation.
    """
    og = params.offset_groups
    flat = [graph.size("B"), graph.positions, params.taps * og, 1]
    y0, x0 = graph.op("Floor", y), graph.op("Floor", x)
    ly, lx = graph.op("Sub", y, y0), graph.op("Sub", x, x0)  # distance to the top-left corner
    one = graph.floats(1.0)
    hy, hx = graph.op("Sub", one, ly), graph.op("Sub", one, lx)
    if modulation is not None:
        hy, ly = graph.op("Mul", hy, modulation), graph.op("Mul", ly, modulation)
    # each weight (B, L, K*og) -> (B, L, K*og, 1), side by side in corner order
    weights = [graph.reshape(graph.op("Mul", wy, wx), flat) for wy in (hy, ly) for wx in (hx, lx)]
    weight = graph.op("Concat", *weights, axis=3)

    # Row of the top-left corner: ((y0 + 2)*Wp + (x0 + 2))*og + group, in int64 so that it is exact.
    padded_width = graph.padded(graph.size("W"))
    row = graph.op("Add", graph.op("Cast", y0, to=TensorProto.INT64), graph.int64(_PAD_BEFORE))
    col = graph.op("Add", graph.op("Cast", x0, to=TensorProto.INT64), graph.int64(_PAD_BEFORE))
    top_left = graph.op("Add", graph.op("Mul", row, graph.as_value(padded_width)), col)
    if og > 1:
        groups = np.tile(np.arange(og), params.taps)  # the group of each of the K*og samples
        top_left = graph.op("Add", graph.op("Mul", top_left, graph.int64(og)), graph.int64(groups))
    top_left = graph.reshape(top_left, flat)  # (B, L, K*og, 1)
    # the four corners are og, Wp*og and (Wp + 1)*og rows after the top-left one
    if isinstance(padded_width, int):
        steps = graph.int64(np.array([0, 1, padded_width, padded_width + 1]) * og)
    else:
        below = graph.op("Mul", padded_width, graph.int64([og]))
        steps = graph.op(
            "Concat", graph.int64([0, og]), below, graph.op("Add", below, graph.int64([og])), axis=0
        )
    index = graph.op("Add", top_left, steps)  # (B, L, K*og, 4)
    return index, weight


def _pixel_rows(graph: _Graph[V], params: DeformConvParams, input: V, per_image: bool) -> V:
    """The padded input as rows of Cg channels, one per (image, padded pixel, offset group).

    Args:
        input: (B, C, H, W).
        per_image: one table per image, or a single table of every image's rows.

    Returns:
        (B, Hp*Wp*og, Cg) per image, row pixel*og + group holding that pixel's channels of that
        group; else (B*Hp*Wp*og, Cg), the same rows of image b starting at b*Hp*Wp*og.
    """
    before, after = [0, 0, _PAD_BEFORE, _PAD_BEFORE], [0, 0, _PAD_AFTER, _PAD_AFTER]
    padded = graph.op("Pad", input, graph.int64(before + after))  # (B, C, Hp, Wp)
    channels_last = graph.op("Transpose", padded, perm=[0, 2, 3, 1])  # (B, Hp, Wp, C)
    rows, cg = _rows_per_image(graph, params), params.channels_per_offset_group
    if per_image:
        return graph.reshape(channels_last, [graph.size("B"), rows, cg])
    return graph.reshape(channels_last, [graph.product(graph.size("B"), rows), cg])


def _rows_per_image(graph: _Graph[V], params: DeformConvParams) -> Dim[V]:
    """Hp*Wp*og, the rows of one image in :func:`_pixel_rows`."""
    return graph.product(graph.padded(graph.size("H")), graph.padded(graph.size("W")), params.offset_groups)


def _read_by_gather(graph: _Graph[V], params: DeformConvParams, input: V, index: V) -> V:
    """gather_rows: one Gather of whole rows from one table of every image's rows.

    Args:
        index: (B, L, K*og, 4), rows within each image.
    """
    table = _pixel_rows(graph, params, input, per_image=False)  # (B*Hp*Wp*og, Cg)
    if graph.size("B") != 1:
        index = graph.op("Add", index, _first_rows(graph, params))
    index = graph.reshape(index, [graph.samples(params), 4])  # (N, 4)
    return graph.op("Gather", table, index, axis=0)  # (N, 4, Cg)


def _first_rows(graph: _Graph[V], params: DeformConvParams) -> V:
    """The first row of each image in a single table of rows: b*Hp*Wp*og, as (B, 1, 1, 1)."""
    batch, per_image = graph.size("B"), _rows_per_image(graph, params)
    if isinstance(batch, int) and isinstance(per_image, int):
        return graph.int64((np.arange(batch) * per_image).reshape(batch, 1, 1, 1))
    first = graph.op("Mul", graph.batch_indices(), graph.as_value(per_image))  # (B,)
    return graph.reshape(first, [batch, 1, 1, 1])


def _read_by_gathernd(graph: _Graph[V], params: DeformConvParams, input: V, index: V) -> V:
    """gathernd: GatherND with batch_dims=1 reads rows of each image.

    Args:
        index: (B, L, K*og, 4), rows within each image.
    """
    rows = _pixel_rows(graph, params, input, per_image=True)  # (B, Hp*Wp*og, Cg)
    per_image = graph.product(graph.positions, params.taps * params.offset_groups * 4)
    index = graph.reshape(index, [graph.size("B"), per_image, 1])
    corners = graph.op("GatherND", rows, index, batch_dims=1)  # (B, L*K*og*4, Cg)
    return graph.reshape(corners, [graph.samples(params), 4, params.channels_per_offset_group])


def _read_by_gatherelements(graph: _Graph[V], params: DeformConvParams, input: V, index: V) -> V:
    """gatherelements: GatherElements of single elements, its row index repeated for every channel.

    Args:
        index: (B, L, K*og, 4), rows within each image.
    """
    rows = _pixel_rows(graph, params, input, per_image=True)  # (B, Hp*Wp*og, Cg)
    cg = params.channels_per_offset_group
    per_image = graph.product(graph.positions, params.taps * params.offset_groups * 4)
    index = graph.reshape(index, [graph.size("B"), per_image, 1])
    index = graph.op("Expand", index, graph.int64([1, 1, cg]))  # (B, L*K*og*4, Cg)
    corners = graph.op("GatherElements", rows, index, axis=1)  # (B, L*K*og*4, Cg)
    return graph.reshape(corners, [graph.samples(params), 4, cg])


def _kernel_times_channels_last(graph: _Graph[V], params: DeformConvParams, samples: V, weight: V) -> V:
    """The grouped product of the kernel with channels-last columns.

    Args:
        samples: (N, 1, Cg), memory order (B, L, K, C) = (B, L, K, G, C/G).
        weight: (Cout, C/G, kh, kw).

    Returns:
        (B, Cout, oh, ow), without bias.
    """
    groups, cout, taps = params.groups, params.out_channels, params.taps
    per_group = params.channels_per_group
    reduced = taps * per_group
    # kernel: (Cout, C/G, kh, kw) -> (G, Cout/G, C/G, K) -> (G, K, C/G, Cout/G) -> (G, K*C/G, Cout/G)
    kernel = graph.reshape(weight, [groups, cout // groups, per_group, taps])
    kernel = graph.reshape(
        graph.op("Transpose", kernel, perm=[0, 3, 2, 1]), [groups, reduced, cout // groups]
    )
    if groups == 1:
        columns = graph.reshape(samples, [graph.size("B"), graph.positions, reduced])  # (B, L, K*C)
        out = graph.op("MatMul", columns, graph.reshape(kernel, [reduced, cout]))  # (B, L, Cout)
    else:
        # (B*L, K, G, C/G) -> (G, B*L, K, C/G) -> (G, B*L, K*C/G)
        pixels = graph.product(graph.size("B"), graph.positions)
        columns = graph.reshape(samples, [pixels, taps, groups, per_group])
        columns = graph.reshape(graph.op("Transpose", columns, perm=[2, 0, 1, 3]), [groups, pixels, reduced])
        out = graph.op("MatMul", columns, kernel)  # (G, B*L, Cout/G)
        out = graph.op("Transpose", out, perm=[1, 0, 2])  # (B*L, G, Cout/G)
        out = graph.reshape(out, [graph.size("B"), graph.positions, cout])  # (B, L, Cout)
    out = graph.op("Transpose", out, perm=[0, 2, 1])  # (B, Cout, L)
    return graph.reshape(out, [graph.size("B"), cout, graph.size("oh"), graph.size("ow")])


# --- shared ---------------------------------------------------------------------------------------


def _regular_grid(graph: _Graph[V], params: DeformConvParams, axis: int, taps_first: bool) -> V:
    """p0 + pk along one axis (0: y, 1: x) for every tap and output position, unpadded pixels.

    Returns:
        (1, K, 1, L) if ``taps_first`` else (1, L, K, 1): of the rank of the coordinates it is
        added to, since converters that relayout 4-D tensors (onnx2tf, pnnx) broadcast a
        lower-rank operand wrongly; a constant when the output size is static.
    """
    static = _static_regular_grid(graph, params, axis, taps_first)
    if static is not None:
        return graph.floats(static)
    stride, pad = params.stride[axis], params.padding[axis]
    # o + 1 for every output position, counted by a running sum of ones along the axis: no
    # integer-to-float cast (see _Graph.as_float). ones, counts: (oh, ow)
    ones = graph.op("Expand", graph.floats(1.0), graph.shape([graph.size("oh"), graph.size("ow")]))
    counts = graph.op("CumSum", ones, graph.int64(axis))
    # o*stride - pad = (o + 1)*stride - (stride + pad)
    positions = graph.op(
        "Add", graph.op("Mul", counts, graph.floats(float(stride))), graph.floats(float(-stride - pad))
    )
    positions = graph.reshape(
        positions, [1, 1, 1, graph.positions] if taps_first else [1, graph.positions, 1, 1]
    )
    taps = _tap_offsets(params, axis).reshape((1, -1, 1, 1) if taps_first else (1, 1, -1, 1))
    return graph.op("Add", graph.floats(taps), positions)


def _static_regular_grid(
    graph: _Graph[V], params: DeformConvParams, axis: int, taps_first: bool
) -> Optional[np.ndarray]:
    """:func:`_regular_grid` as a NumPy array in the compute dtype, None unless (oh, ow) is static."""
    oh, ow = graph.size("oh"), graph.size("ow")
    if not (isinstance(oh, int) and isinstance(ow, int)):
        return None
    rows, cols = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    positions = (rows if axis == 0 else cols).reshape(-1) * params.stride[axis] - params.padding[axis]  # (L,)
    grid = _tap_offsets(params, axis)[:, None] + positions[None, :]  # (K, L)
    return (grid[None, :, None, :] if taps_first else grid.T[None, :, :, None]).astype(graph.dtype)


def _tap_offsets(params: DeformConvParams, axis: int) -> np.ndarray:
    """pk along one axis: i*dil_h (axis 0) or j*dil_w (axis 1) for every tap, as (K,)."""
    kh, kw = params.kernel
    i, j = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    return (i if axis == 0 else j).reshape(-1) * params.dilation[axis]


def _plus_bias(graph: _Graph[V], params: DeformConvParams, out: V, bias: Optional[V]) -> V:
    """out + bias, the bias (Cout,) -> (Cout, 1, 1) to broadcast over (B, Cout, oh, ow)."""
    if bias is None:
        return out
    return graph.op("Add", out, graph.reshape(bias, [params.out_channels, 1, 1]))


#: The core's lowerings: each writes the whole call, bias included, in the compute dtype.
_LOWERINGS: dict[Lowering, Callable[[_Graph[Any], DeformConvParams, Operands[Any]], Any]] = {
    "grid_sample": functools.partial(_grid_sample, False),
    "grid_sample_ncnn": functools.partial(_grid_sample, True),
    "gather_rows": functools.partial(_gather, _read_by_gather),
    "gathernd": functools.partial(_gather, _read_by_gathernd),
    "gatherelements": functools.partial(_gather, _read_by_gatherelements),
    "native": _native,
}


class _Graph(Generic[V]):
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
        """0, 1, ..., B-1 as a (B,) int64 value: a constant when the batch is static."""
        batch = self.size("B")
        if isinstance(batch, int):
            return self.int64(np.arange(batch))
        # a running sum of ones minus one: Range would need B as a 0-d scalar, which some tools
        # (ONNX Runtime's symbolic shape inference, tract) cannot follow from Shape
        ones = self.op("Expand", self.int64(1), batch)  # (B,)
        return self.op("Sub", self.op("CumSum", ones, self.int64(0)), self.int64(1))

    def samples(self, params: DeformConvParams) -> Dim[V]:
        """N = B*L*K*og, the number of bilinear samples."""
        return self.product(self.size("B"), self.positions, params.taps * params.offset_groups)

    def padded(self, size: Dim[V]) -> Dim[V]:
        """A size of the input after the gather lowerings' padding: H + 3 or W + 3."""
        extra = _PAD_BEFORE + _PAD_AFTER
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
        return self.op("Reshape", value, self.shape(dims))

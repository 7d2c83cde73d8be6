"""Where each bilinear sample is: the coordinate part of the decomposition.

A sample of output position (oy, ox), tap k = (i, j) and offset group g lies at

    p = p0 + pk + dp = (oy*stride_h - pad_h + i*dil_h + dy,  ox*stride_w - pad_w + j*dil_w + dx)

in unpadded input pixels, y before x. Two forms compute it:

- :func:`corner_rows`, for the gather lowerings, keeps every absolute position an integer
  (int32, or int64 where int32 cannot hold the rows: :attr:`.graph_builder.Graph.index_dtype`):
  the regular grid p0 + pk is an integer from the sizes, and only the offset is split, into
  Floor(dp), cast to that integer type, and the fraction dp - Floor(dp) in [0, 1), which is
  exact in every float type and is all that the bilinear weights need. Converters and runtimes that compute in
  half precision (fp16 converters, OpenVINO's bf16 and f16) never retype integers, so the
  positions stay exact there however large the image: a float16 position above 1024 has a
  spacing of 0.5 px, a bfloat16 one above 128 of 1 px or more.
- :func:`normalised_grid`, for GridSample, is a float (x, y) normalised to [-1, 1] over the
  image, as GridSample reads it; its spacing in float16 is 2^-11 near the edges, 0.25 px at
  W = 1024 (README, "Precision").
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .emitter import V
from .graph_builder import PAD_BEFORE, Dim, Graph
from .params import DeformConvParams

#: Offsets at least this large (either sign, in pixels), infinite or NaN are replaced by it before
#: their integer part is taken, since a cast of those to an integer is undefined. It is exact in
#: float16 and bfloat16, and a sample that far is outside any image up to 32768 - (kernel reach)
#: pixels; fp16 converters that clamp large constants (to 1e4) keep it outside too.
FAR_OFFSET = 2.0**15
#: GridSample coordinates (normalised to [-1, 1] over the image) beyond this are far outside.
_GRID_LIMIT = 3.0


def corner_rows(graph: Graph[V], params: DeformConvParams, offset: V, mask: Optional[V]) -> tuple[V, V]:
    """The four corners of every sample, as rows of the padded channels-last input, and their weights.

    The input is padded by :data:`~.graph_builder.PAD_BEFORE` rows and columns before and one after
    (:func:`.bilinear.pixel_rows`), so every corner of a sample inside torchvision's window
    (-1 < y < H, -1 < x < W) lies in the padded image, the corners outside the image reading
    zeros. A sample outside the window is moved to padded pixel (0, 0), whose four corners are
    all padding, with weight 1 on the first: it reads exact zeros, even where the input holds Inf
    or NaN, as torchvision's kernel, which does not read the image there.

    Args:
        offset: (B, og*K*2, oh, ow), channels laid out (og, kh, kw, [dy, dx]).
        mask: (B, og*K, oh, ow), channels laid out (og, kh, kw); None for DCNv1.

    Returns:
        index: (B, L, K*og, 4) in ``graph.index_dtype``, the row of each corner within its
            image's table, pixel*og + group, corners ordered (y0, x0), (y0, x1), (y1, x0),
            (y1, x1); samples ordered taps before offset groups, as the kernel reads channels.
        weight: (B, L, K*og, 4), each corner's bilinear weight times the mask.
    """
    og, taps = params.offset_groups, params.taps
    batch, positions = graph.size("B"), graph.positions
    # every per-sample tensor is (B, oh, ow, K*og): memory order (B, L, K, og), last axis not 1 (ONNX
    # Runtime's elementwise kernels are an order of magnitude slower on a last axis of size 1)
    per_sample = [batch, graph.size("oh"), graph.size("ow"), taps * og]
    # offset: (B, og*K*2, oh, ow) -> (B, og, K*2, L) -> (B, L, K*2, og)
    offset = graph.reshape(offset, [batch, og, taps * 2, positions])
    offset = graph.op("Transpose", offset, perm=[0, 3, 2, 1])
    axes = []
    for axis, size in ((0, graph.size("H")), (1, graph.size("W"))):
        # every second row of K*2: (B, L, K, og)
        delta = graph.op(
            "Slice", offset, graph.int64([axis]), graph.int64([2 * taps]), graph.int64([2]), graph.int64([2])
        )
        axes.append(_integer_position(graph, params, graph.reshape(delta, per_sample), axis, size))
    (row, fraction_y, within_y), (col, fraction_x, within_x) = axes
    inside = graph.op("And", within_y, within_x)
    # top-left corner: padded pixel row*Wp + col, or padded pixel 0 outside the window
    padded_width = graph.padded(graph.size("W"))
    width_index = graph.as_index(padded_width)  # read by both the top-left row and the corner steps
    top_left = graph.op("Add", graph.op("Mul", row, width_index), col)
    # a product, not Where(inside, top_left, 0): onnx2tf 2.6 writes an integer Where whose third
    # operand broadcasts as TFLite's SELECT, which cannot broadcast, and the model does not load
    top_left = graph.op("Mul", top_left, graph.op("Cast", inside, to=graph.index_type))
    if og > 1:  # the table holds og rows per pixel: pixel*og + group
        groups = np.tile(np.arange(og), taps)  # the group of each of the K*og samples
        top_left = graph.op("Add", graph.op("Mul", top_left, graph.indices(og)), graph.indices(groups))
    flat = [batch, positions, taps * og, 1]
    index = graph.op(
        "Add", graph.reshape(top_left, flat), _corner_steps(graph, params, padded_width, width_index)
    )
    # index: (B, L, K*og, 4)

    zero = graph.floats(0.0)
    ly, lx = graph.op("Where", inside, fraction_y, zero), graph.op("Where", inside, fraction_x, zero)
    one = graph.floats(1.0)
    hy, hx = graph.op("Sub", one, ly), graph.op("Sub", one, lx)
    if mask is not None:
        modulation = _per_sample(graph, params, mask)  # (B, oh, ow, K*og)
        hy, ly = graph.op("Mul", hy, modulation), graph.op("Mul", ly, modulation)
    # each weight (B, oh, ow, K*og) -> (B, L, K*og, 1), side by side in corner order
    weights = [graph.reshape(graph.op("Mul", wy, wx), flat) for wy in (hy, ly) for wx in (hx, lx)]
    return index, graph.op("Concat", *weights, axis=3)


def _integer_position(
    graph: Graph[V], params: DeformConvParams, delta: V, axis: int, size: Dim[V]
) -> tuple[V, V, V]:
    """One axis of every sample's position p = p0 + pk + delta, split into integer and fraction.

    Args:
        delta: (B, oh, ow, K*og), the offsets along ``axis`` (0: y, 1: x).
        size: H or W.

    Returns:
        floor: (B, oh, ow, K*og) in ``graph.index_dtype``, Floor(p) + PAD_BEFORE: the padded
            frame's row or column.
        fraction: (B, oh, ow, K*og), p - Floor(p), in [0, 1).
        within: (B, oh, ow, K*og) bool, -1 < p < size (torchvision's window along this axis).
    """
    far = graph.floats(FAR_OFFSET)
    # |delta| < FAR_OFFSET is false for NaN, so NaN, Inf and huge offsets all become FAR_OFFSET
    delta = graph.op("Where", graph.op("Less", graph.op("Abs", delta), far), delta, far)
    floor = graph.op("Floor", delta)
    fraction = graph.op("Sub", delta, floor)
    base = _padded_regular_grid(graph, params, axis)  # p0 + pk + PAD_BEFORE
    low = graph.op("Add", graph.op("Cast", floor, to=graph.index_type), base)
    high = graph.op("Add", graph.op("Cast", graph.op("Ceil", delta), to=graph.index_type), base)
    # -1 < p < size  <=>  Ceil(p) >= 0 and Floor(p) < size, here in the padded frame
    if isinstance(size, int):
        limit = graph.indices([size + PAD_BEFORE])
    else:
        limit = graph.op("Add", graph.as_index(size), graph.indices([PAD_BEFORE]))
    within = graph.op(
        "And",
        graph.op("Greater", high, graph.indices(PAD_BEFORE - 1)),
        graph.op("Less", low, limit),
    )
    return low, fraction, within


def _padded_regular_grid(graph: Graph[V], params: DeformConvParams, axis: int) -> V:
    """p0 + pk + PAD_BEFORE along one axis, in ``graph.index_dtype``: (1, oh, 1, K*og) for y,
    (1, 1, ow, K*og) for x.

    Two small factors broadcast into it, the output positions o*stride - pad + PAD_BEFORE along
    the axis and the taps' i*dil (or j*dil), so that no tensor of every position is stored.
    """
    stride, pad = params.stride[axis], params.padding[axis]
    count = graph.size("oh" if axis == 0 else "ow")
    shape: list[Dim[V]] = [1, count, 1, 1] if axis == 0 else [1, 1, count, 1]
    if isinstance(count, int):
        values = np.arange(count) * stride - pad + PAD_BEFORE
        positions = graph.indices(values.reshape((1, count, 1, 1) if axis == 0 else (1, 1, count, 1)))
    else:
        counts = graph.counting(count)  # o + 1 for every output position, (o,)
        # o*stride - pad + PAD_BEFORE = (o + 1)*stride - (stride + pad - PAD_BEFORE)
        positions = graph.op(
            "Add", graph.op("Mul", counts, graph.indices(stride)), graph.indices(PAD_BEFORE - stride - pad)
        )
        positions = graph.reshape(positions, shape)
    taps = np.repeat(tap_offsets(params, axis), params.offset_groups).reshape(1, 1, 1, -1)
    return graph.op("Add", positions, graph.indices(taps))


def _corner_steps(graph: Graph[V], params: DeformConvParams, padded_width: Dim[V], width_index: V) -> V:
    """The rows of the four corners after the top-left one: 0, og, Wp*og, (Wp + 1)*og, as (4,).

    Args:
        padded_width: Wp, an int when static.
        width_index: Wp as a (1,) value in ``graph.index_dtype`` (read only when Wp is symbolic).
    """
    og = params.offset_groups
    if isinstance(padded_width, int):
        return graph.indices(np.array([0, 1, padded_width, padded_width + 1]) * og)
    below = graph.op("Mul", width_index, graph.indices([og]))
    return graph.op(
        "Concat", graph.indices([0, og]), below, graph.op("Add", below, graph.indices([og])), axis=0
    )


def _per_sample(graph: Graph[V], params: DeformConvParams, mask: V) -> V:
    """The mask in the samples' order.

    (B, og*K, oh, ow) -> (B, og, K, L) -> (B, L, K, og) -> (B, oh, ow, K*og).
    """
    og, taps, batch = params.offset_groups, params.taps, graph.size("B")
    mask = graph.reshape(mask, [batch, og, taps, graph.positions])
    mask = graph.op("Transpose", mask, perm=[0, 3, 2, 1])
    return graph.reshape(mask, [batch, graph.size("oh"), graph.size("ow"), taps * og])


def normalised_grid(graph: Graph[V], params: DeformConvParams, offset: V, portable: bool) -> V:
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
        (B*og, K, L, 2), or (B, og*K, 2, L) if ``portable``: there each offset group's part is
        transposed after it is sliced off (:func:`.bilinear.grid_sample_each_offset_group`).
    """
    og, taps, positions = params.offset_groups, params.taps, graph.positions
    # offset: (B, og*K*2, oh, ow) -> (B*og, K, 2, L), or (B, og*K, 2, L)
    images, rows = (graph.size("B"), og * taps) if portable else (graph.product(graph.size("B"), og), taps)
    offset = graph.reshape(offset, [images, rows, 2, positions])
    repeats = rows // taps  # the base, (1, K, 1, L), repeated for every offset group in the rows
    coordinates = []
    for axis, size in ((1, graph.size("W")), (0, graph.size("H"))):  # x, then y: GridSample's order
        # a Slice, not a Gather of index [axis]: pnnx drops the gathered axis
        delta = graph.slice(offset, 2, axis, axis + 1)  # (B*og, K, 1, L) | (B, og*K, 1, L)
        # scale 2/W and base (2 (p0 + pk) + 1) / W - 1, the latter (1, K, 1, L)
        static = _static_regular_grid(graph, params, axis)
        if static is not None and isinstance(size, int):
            scale = graph.floats(2.0 / size)
            base_value = graph.floats(np.tile((2.0 * static + 1.0) / size - 1.0, (1, repeats, 1, 1)))
        else:
            float_size = graph.as_float(size)
            scale = graph.op("Div", graph.floats(2.0), float_size)
            regular = _regular_grid(graph, params, axis)
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
        return graph.op("Clip", grid, graph.floats(-_GRID_LIMIT), graph.floats(_GRID_LIMIT))
    within = graph.op("Less", graph.op("Abs", grid), graph.floats(_GRID_LIMIT))
    grid = graph.op("Where", within, grid, graph.floats(-_GRID_LIMIT))
    return graph.op("Transpose", grid, perm=[0, 1, 3, 2])  # (B*og, K, L, 2)


def _regular_grid(graph: Graph[V], params: DeformConvParams, axis: int) -> V:
    """p0 + pk along one axis (0: y, 1: x) for every tap and output position, unpadded pixels,
    in the compute dtype, as (1, K, 1, L), for sizes that are not static."""
    stride, pad = params.stride[axis], params.padding[axis]
    # o + 1 for every output position, counted by a running sum of ones along the axis: no
    # integer-to-float cast (see Graph.as_float). ones, counts: (oh, ow)
    ones = graph.op("Expand", graph.floats(1.0), graph.shape([graph.size("oh"), graph.size("ow")]))
    counts = graph.op("CumSum", ones, graph.int64(axis))
    # o*stride - pad = (o + 1)*stride - (stride + pad)
    positions = graph.op(
        "Add", graph.op("Mul", counts, graph.floats(float(stride))), graph.floats(float(-stride - pad))
    )
    positions = graph.reshape(positions, [1, 1, 1, graph.positions])
    taps = tap_offsets(params, axis).reshape((1, -1, 1, 1))
    return graph.op("Add", graph.floats(taps), positions)


def _static_regular_grid(graph: Graph[V], params: DeformConvParams, axis: int) -> Optional[np.ndarray]:
    """:func:`_regular_grid` as a NumPy array in the compute dtype, None unless (oh, ow) is static."""
    oh, ow = graph.size("oh"), graph.size("ow")
    if not (isinstance(oh, int) and isinstance(ow, int)):
        return None
    rows, cols = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    positions = (rows if axis == 0 else cols).reshape(-1) * params.stride[axis] - params.padding[axis]  # (L,)
    grid = tap_offsets(params, axis)[:, None] + positions[None, :]  # (K, L)
    return grid[None, :, None, :].astype(graph.dtype)


def tap_offsets(params: DeformConvParams, axis: int) -> np.ndarray:
    """pk along one axis: i*dil_h (axis 0) or j*dil_w (axis 1) for every tap, as (K,)."""
    kh, kw = params.kernel
    i, j = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    return (i if axis == 0 else j).reshape(-1) * params.dilation[axis]

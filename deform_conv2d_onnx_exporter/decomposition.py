"""DCNv2 (torchvision's ``deform_conv2d``) described as standard ONNX operators.

The computation, for output position (oy, ox), kernel tap k = (i, j) and offset group g:

    p0 + pk = (oy·stride_h − pad_h + i·dil_h,  ox·stride_w − pad_w + j·dil_w)     regular grid
    p       = p0 + pk + Δp_k                                                      Δp from ``offset``
    col[c, k, oy, ox] = Δm_k · bilinear(input[c], p)                              Δm from ``mask``
    out[co, oy, ox]   = bias[co] + Σ_{c in group(co), k} weight[co, c, k] · col[c, k, oy, ox]

Coordinates are (y, x) in the frame of the *unpadded* input: pixel (0, 0) is input[..., 0, 0].
A sample is zero when y ≤ −1, y ≥ H, x ≤ −1 or x ≥ W; inside that window each of its four
corners that lies outside the image contributes zero. To read those corners without per-corner
tests, the input is zero-padded by 2 rows/columns before (top, left) and 1 after (bottom, right):
every corner of an in-window sample then lands inside the padded image, and a sample outside
the window is moved to (−2, −2), whose four corners are all padding, so it reads exact zeros
(even where the input holds Inf or NaN).

Shape names used in the comments: B batch, C input channels, og offset groups, Cg = C / og,
G groups, K = kh·kw taps, (oh, ow) output size, L = oh·ow, Hp = H + 3, Wp = W + 3.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Generic, Literal, Optional, Sequence, Union, cast

import numpy as np
from onnx import TensorProto

from .emitter import Emitter, V
from .params import DeformConvExportError, DeformConvParams

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


#: How the graph computes the call; see :class:`LoweringOptions`.
Lowering = Literal["auto", "grid_sample", "gather_rows", "gathernd", "gatherelements", "native"]
LOWERINGS: tuple[Lowering, ...] = (
    "auto", "grid_sample", "gather_rows", "gathernd", "gatherelements", "native"
)
#: The first opset with GridSample.
GRID_SAMPLE_MIN_OPSET = 16
#: The first opset with the DeformConv operator.
NATIVE_MIN_OPSET = 19


@dataclass(frozen=True)
class LoweringOptions:
    """How the core computes the call.

    Attributes:
        lowering: ``auto`` (default): the fastest exact decomposition the opset allows,
            ``grid_sample`` from opset 16, else ``gather_rows``. ``grid_sample``: ONNX GridSample
            samples every channel, then one MatMul applies the kernel. ``gather_rows``: one
            Gather of whole channel vectors from a channels-last copy of the input, corners
            combined by a batched MatMul. ``gathernd``: GatherND with batch_dims=2 over
            (B, og, pixels, Cg). ``gatherelements``: GatherElements of single elements, its
            index expanded to every channel. ``native``: ONNX's DeformConv operator
            (opset >= 19), no decomposition.
    """

    lowering: Lowering = "auto"

    def resolve(self, opset: int, compute_type: int) -> Lowering:
        """The concrete lowering at ``opset`` for a graph computing in ``compute_type``.

        ``auto`` takes ``grid_sample`` for float32 computation from opset 16, else
        ``gather_rows``: float64 asks for torchvision's own coordinate arithmetic, and ONNX
        Runtime has no float64 GridSample before opset 20.

        Raises:
            DeformConvExportError: the lowering needs a higher opset.
        """
        if self.lowering == "auto":
            fast = opset >= GRID_SAMPLE_MIN_OPSET and compute_type == TensorProto.FLOAT
            return "grid_sample" if fast else "gather_rows"
        needed = {"grid_sample": GRID_SAMPLE_MIN_OPSET, "native": NATIVE_MIN_OPSET}.get(self.lowering, 0)
        if opset < needed:
            raise DeformConvExportError(
                f"lowering: {self.lowering!r} needs opset >= {needed}, got opset {opset}; "
                f"choose lowering='auto' or a higher opset_version"
            )
        return self.lowering

    @classmethod
    def from_api(
        cls, use_gathernd: Optional[bool], enable_openvino_patch: bool, lowering: str
    ) -> LoweringOptions:
        """Options from the public arguments.

        An explicit ``use_gathernd`` keeps its 1.x meaning: True for ``gathernd``, False for
        ``gatherelements``; with ``lowering="auto"`` it decides. ``enable_openvino_patch`` is
        accepted for 1.x compatibility and changes nothing: the 1.x patch made the shape after
        GatherND explicit for OpenVINO, and every reshape in this graph is explicit.

        Raises:
            DeformConvExportError: an unknown lowering, or one that contradicts ``use_gathernd``.
        """
        if lowering == "auto" and use_gathernd is not None:
            return cls("gathernd" if use_gathernd else "gatherelements")
        if lowering not in LOWERINGS:
            raise DeformConvExportError(
                f"lowering: expected one of {', '.join(map(repr, LOWERINGS))}, got {lowering!r}"
            )
        implied = None if use_gathernd is None else ("gathernd" if use_gathernd else "gatherelements")
        if implied is not None and implied != lowering and lowering != "auto":
            raise DeformConvExportError(
                f"use_gathernd: {use_gathernd} asks for {implied!r}, which contradicts "
                f"lowering={lowering!r}; pass only one of the two"
            )
        return cls(cast(Lowering, lowering))


#: A dimension: a Python int when static, else a 1-D int64 graph value of length 1.
Dim = Union[int, V]


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
        options: the sampling strategy.
        input: (B, C, H, W).
        weight: (Cout, C / G, kh, kw).
        offset: (B, og·K·2, oh, ow), channels laid out (og, kh, kw, [Δy, Δx]).
        mask: (B, og·K, oh, ow), channels laid out (og, kh, kw); read only if ``params.use_mask``.
        bias: (Cout,) or None.

    Returns:
        (B, Cout, oh, ow), in the input's dtype.
    """
    g = _Builder(e, _compute_dtype(e, input), input, offset)
    in_type = e.elem_type(input)
    assert in_type is not None  # checked by _compute_dtype
    input, weight, offset = g.to_compute(input), g.to_compute(weight), g.to_compute(offset)
    if bias is not None:
        bias = g.to_compute(bias)

    lowering = options.resolve(e.opset, g.onnx_dtype)
    if lowering == "native":
        out = _native(g, params, input, weight, offset, mask, bias)
    else:
        if lowering == "grid_sample":
            columns = _grid_sample_columns(g, params, input, offset, mask)
            out = _convolve_columns(g, params, columns, weight, offset)
        else:
            y, x = _sampling_points(g, params, input, offset)  # (B, og, K, L, 1) each
            y, x = _move_outside_samples(g, input, y, x)
            modulation = _modulation(g, params, mask) if params.use_mask else None
            corner_index, corner_weight = _bilinear_corners(g, input, y, x, modulation)
            if lowering == "gather_rows":
                out = _gather_rows_and_convolve(
                    g, params, input, corner_index, corner_weight, weight, offset
                )
            else:
                columns = _sample_columns(
                    g, params, lowering, input, corner_index, corner_weight
                )
                out = _convolve_columns(g, params, columns, weight, offset)
        if bias is not None:
            # bias: (Cout,) -> (Cout, 1, 1) to broadcast over (B, Cout, oh, ow)
            out = e.op("Add", out, g.reshape(bias, [params.out_channels, 1, 1]))
    if in_type != g.onnx_dtype:
        out = e.op("Cast", out, to=in_type)
    return out


def torchvision_deform_conv2d(
    e: Emitter[V],
    options: LoweringOptions,
    input: V,
    weight: V,
    offset: V,
    mask: V,
    bias: V,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    offset_groups: int,
    use_mask: bool,
) -> V:
    """Emit ``torchvision::deform_conv2d`` from the operator's own arguments, in schema order.

    Validates the call against the static shapes the emitter knows, then emits
    :func:`deform_conv2d`. The mask is a dummy when ``use_mask`` is False and is then not read.

    Raises:
        DeformConvExportError: for a call that cannot be exported correctly.
    """
    params = DeformConvParams.from_call(
        input_shape=e.static_shape(input),
        weight_shape=e.static_shape(weight),
        offset_shape=e.static_shape(offset),
        mask_shape=e.static_shape(mask),
        stride=(stride_h, stride_w),
        padding=(pad_h, pad_w),
        dilation=(dilation_h, dilation_w),
        groups=groups,
        offset_groups=offset_groups,
        use_mask=use_mask,
    )
    return deform_conv2d(e, params, options, input, weight, offset, mask, bias)


def _compute_dtype(e: Emitter[V], input: V) -> type[np.floating]:
    elem_type = e.elem_type(input)
    if elem_type is None:
        raise DeformConvExportError(
            "input: the element type must be known at export time, got an unknown dtype"
        )
    if elem_type not in _FLOAT_TYPES:
        name = TensorProto.DataType.Name(elem_type).lower()
        raise DeformConvExportError(
            f"input: expected a floating-point tensor (float16, bfloat16, float32, float64), "
            f"got {name}"
        )
    return _FLOAT_TYPES[elem_type]


def _sampling_points(
    g: _Builder[V], params: DeformConvParams, input: V, offset: V
) -> tuple[V, V]:
    """p = p0 + pk + Δp, in unpadded input pixels.

    Returns:
        (y, x), each (B, og, K, L, 1).
    """
    og, taps = params.offset_groups, params.taps
    oh, ow = g.dim(offset, 2), g.dim(offset, 3)
    # offset: (B, og·K·2, oh, ow) -> (B, og, K, 2, oh, ow)
    offset = g.reshape(offset, [g.batch, og, taps, 2, oh, ow])
    points = []
    for axis in (0, 1):  # y, then x
        # delta: (B, og, K, 1, oh, ow)
        delta = g.e.op("Gather", offset, g.int64([axis]), axis=3)
        # base: (K, 1, oh, 1) for y, (K, 1, 1, ow) for x
        base = g.e.op("Add", _kernel_taps(g, params, axis), _output_positions(g, params, axis, (oh, ow)))
        point = g.e.op("Add", delta, base)
        # point: (B, og, K, 1, oh, ow) -> (B, og, K, L, 1)
        points.append(g.reshape(point, [g.batch, og, taps, g.positions, 1]))
    return points[0], points[1]


def _kernel_taps(g: _Builder[V], params: DeformConvParams, axis: int) -> V:
    """pk along one axis: i·dil_h (axis 0) or j·dil_w (axis 1) for every tap, as (K, 1, 1, 1)."""
    kh, kw = params.kernel
    i, j = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    tap = (i if axis == 0 else j).reshape(-1, 1, 1, 1) * params.dilation[axis]
    return g.floats(tap)


def _output_positions(
    g: _Builder[V], params: DeformConvParams, axis: int, out_size: tuple[Dim[V], Dim[V]]
) -> V:
    """p0 along one axis: o·stride − pad for every output row o (axis 0) or column (axis 1).

    Returns:
        (oh, 1) for rows, (ow,) for columns; a constant when the output size is static.
    """
    stride, pad = params.stride[axis], params.padding[axis]
    n = out_size[axis]
    shape = [-1, 1] if axis == 0 else [-1]
    if isinstance(n, int):
        return g.floats((np.arange(n) * stride - pad).reshape(shape))
    count = g.reshape(n, [])  # Range takes scalars
    positions = g.e.op("Range", g.int64(0), count, g.int64(1))
    positions = g.e.op("Cast", positions, to=g.onnx_dtype)
    positions = g.e.op("Add", g.e.op("Mul", positions, g.floats(stride)), g.floats(-pad))
    return g.reshape(positions, shape)


def _modulation(g: _Builder[V], params: DeformConvParams, mask: Optional[V]) -> V:
    """Δm: (B, og·K, oh, ow) -> (B, og, K, L, 1)."""
    if mask is None:
        raise DeformConvExportError("mask: use_mask is True but no mask tensor was given")
    return g.reshape(g.to_compute(mask), [g.batch, params.offset_groups, params.taps, g.positions, 1])


def _move_outside_samples(g: _Builder[V], input: V, y: V, x: V) -> tuple[V, V]:
    """Samples outside the window (y ≤ −1, y ≥ H, x ≤ −1, x ≥ W, or NaN) moved to (−2, −2).

    There all four corners are outside the image, so every lowering reads zeros for them.

    Args:
        input: (B, C, H, W), only for H and W.
        y, x: (B, og, K, L, 1), unpadded frame.

    Returns:
        (y, x), the same shapes.
    """
    e = g.e
    height = g.dim_as_float(input, 2)
    width = g.dim_as_float(input, 3)
    minus_one = g.floats(-1.0)
    inside = e.op(
        "And",
        e.op("And", e.op("Greater", y, minus_one), e.op("Less", y, height)),
        e.op("And", e.op("Greater", x, minus_one), e.op("Less", x, width)),
    )
    outside = g.floats(_OUTSIDE)
    return e.op("Where", inside, y, outside), e.op("Where", inside, x, outside)


def _bilinear_corners(
    g: _Builder[V], input: V, y: V, x: V, modulation: Optional[V]
) -> tuple[V, V]:
    """The four corners of every sample and their weights.

    Args:
        input: (B, C, H, W), only for W.
        y, x: (B, og, K, L, 1), unpadded frame, inside the window or at (−2, −2).
        modulation: (B, og, K, L, 1) or None.

    Returns:
        index: (B, og, K, L, 4) int64, flat positions in the padded (Hp, Wp) image, corners
            ordered (y0, x0), (y0, x1), (y1, x0), (y1, x1).
        weight: (B, og, K, L, 4), bilinear weight times modulation.
    """
    e = g.e
    y0, x0 = e.op("Floor", y), e.op("Floor", x)
    ly, lx = e.op("Sub", y, y0), e.op("Sub", x, x0)  # distance to the top-left corner
    one = g.floats(1.0)
    hy, hx = e.op("Sub", one, ly), e.op("Sub", one, lx)
    weights = [e.op("Mul", hy, hx), e.op("Mul", hy, lx), e.op("Mul", ly, hx), e.op("Mul", ly, lx)]
    weight = e.op("Concat", *weights, axis=-1)
    if modulation is not None:
        weight = e.op("Mul", weight, modulation)

    # Flat index in the padded image: (y + 2)·Wp + (x + 2), computed in int64 so that it is exact.
    padded_width = g.dim_plus(input, 3, _PAD_BEFORE + _PAD_AFTER)
    row = e.op("Add", e.op("Cast", y0, to=TensorProto.INT64), g.int64(_PAD_BEFORE))
    col = e.op("Add", e.op("Cast", x0, to=TensorProto.INT64), g.int64(_PAD_BEFORE))
    top_left = e.op("Add", e.op("Mul", row, padded_width), col)
    top_right = e.op("Add", top_left, g.int64(1))
    bottom_left = e.op("Add", top_left, padded_width)
    bottom_right = e.op("Add", bottom_left, g.int64(1))
    index = e.op("Concat", top_left, top_right, bottom_left, bottom_right, axis=-1)
    return index, weight


def _sample_columns(
    g: _Builder[V],
    params: DeformConvParams,
    lowering: Lowering,
    input: V,
    index: V,
    weight: V,
) -> V:
    """Bilinear samples of every channel at every tap: the "columns" of the convolution.

    Args:
        input: (B, C, H, W).
        index: (B, og, K, L, 4) int64 flat corner positions in the padded image.
        weight: (B, og, K, L, 4) corner weights.

    Returns:
        (B, og, Cg, K, L, 1).
    """
    e = g.e
    og, cg, taps = params.offset_groups, params.channels_per_offset_group, params.taps
    before, after = [0, 0, _PAD_BEFORE, _PAD_BEFORE], [0, 0, _PAD_AFTER, _PAD_AFTER]
    padded = e.op("Pad", input, g.int64(before + after))  # (B, C, Hp, Wp)
    # image: (B, og, Cg, Hp·Wp)
    padded_pixels = g.padded_pixels(input)  # Hp·Wp
    image = g.reshape(padded, [g.batch, og, cg, padded_pixels])

    if lowering == "gathernd":
        # rows: (B, og, Hp·Wp, Cg), one channel vector per padded pixel
        rows = e.op("Transpose", image, perm=[0, 1, 3, 2])
        # index: (B, og, K·L·4, 1)
        samples = g.product(taps * 4, g.positions)
        index = g.reshape(index, [g.batch, og, samples, 1])
        corners = e.op("GatherND", rows, index, batch_dims=2)  # (B, og, K·L·4, Cg)
        # corners: (B, og, K, L, 4, Cg); weight: (B, og, K, L, 1, 4)
        corners = g.reshape(corners, [g.batch, og, taps, g.positions, 4, cg])
        weight = g.reshape(weight, [g.batch, og, taps, g.positions, 1, 4])
        samples = e.op("MatMul", weight, corners)  # (B, og, K, L, 1, Cg)
        return e.op("Transpose", samples, perm=[0, 1, 5, 2, 3, 4])

    # index: (B, og, 1, K·L·4) -> (B, og, Cg, K·L·4), the same positions for every channel
    index = g.reshape(index, [g.batch, og, 1, g.product(taps * 4, g.positions)])
    index = e.op("Expand", index, g.int64([1, 1, cg, 1]))
    corners = e.op("GatherElements", image, index, axis=3)  # (B, og, Cg, K·L·4)
    # corners: (B, og, Cg, K, L, 4); weight: (B, og, 1, K, L, 4)
    corners = g.reshape(corners, [g.batch, og, cg, taps, g.positions, 4])
    weight = g.reshape(weight, [g.batch, og, 1, taps, g.positions, 4])
    return g.reduce_sum_last(e.op("Mul", corners, weight))


def _native(
    g: _Builder[V],
    params: DeformConvParams,
    input: V,
    weight: V,
    offset: V,
    mask: Optional[V],
    bias: Optional[V],
) -> V:
    """ONNX DeformConv, whose attributes and input layouts are torchvision's."""
    inputs = [input, weight, offset]
    if bias is not None or params.use_mask:
        inputs.append(bias if bias is not None else g.floats(np.zeros(params.out_channels)))
    if params.use_mask:
        if mask is None:
            raise DeformConvExportError("mask: use_mask is True but no mask tensor was given")
        inputs.append(g.to_compute(mask))
    (pad_h, pad_w), (kh, kw) = params.padding, params.kernel
    return g.e.op(
        "DeformConv",
        *inputs,
        dilations=list(params.dilation),
        group=params.groups,
        kernel_shape=[kh, kw],
        offset_group=params.offset_groups,
        pads=[pad_h, pad_w, pad_h, pad_w],
        strides=list(params.stride),
    )


def _grid_sample_columns(
    g: _Builder[V], params: DeformConvParams, input: V, offset: V, mask: Optional[V]
) -> V:
    """Bilinear samples of every channel at every tap, by ONNX GridSample (opset >= 16).

    GridSample with zero padding gives each corner outside the image the value zero, which is
    torchvision's rule; a sample outside the window has all four corners outside and so is zero,
    as torchvision's explicit test makes it (for finite inputs: GridSample still multiplies an
    Inf or NaN pixel by a zero weight at the window's very edge).
    The grid holds (x, y) normalised so that −1 and 1 are the outer edges of the border pixels
    (align_corners=0): x_norm = (2x + 1) / W − 1 = Δx · 2/W + ((2·(p0 + pk) + 1) / W − 1).
    With static sizes the second term is folded to a constant by the exporter or the runtime.

    Args:
        input: (B, C, H, W).
        offset: (B, og·K·2, oh, ow).
        mask: (B, og·K, oh, ow); read only if ``params.use_mask``.

    Returns:
        (B, og, Cg, K, L, 1).
    """
    e = g.e
    og, cg, taps = params.offset_groups, params.channels_per_offset_group, params.taps
    oh, ow = g.dim(offset, 2), g.dim(offset, 3)
    # offset: (B, og·K·2, oh, ow) -> (B, og, K, 2, oh, ow) -> (B, og, K, oh, ow, [Δy, Δx])
    offset = g.reshape(offset, [g.batch, og, taps, 2, oh, ow])
    offset = e.op("Transpose", offset, perm=[0, 1, 2, 4, 5, 3])

    height, width = g.dim_as_float(input, 2), g.dim_as_float(input, 3)  # (1,) each
    # [Δy, Δx] @ [[0, 2/H], [2/W, 0]] = [Δx·2/W, Δy·2/H]: scaled and in GridSample's (x, y) order
    zero, two = g.floats([0.0]), g.floats([2.0])
    swap = e.op("Concat", zero, e.op("Div", two, height), e.op("Div", two, width), zero, axis=0)
    swap = g.reshape(swap, [2, 2])
    bases = []
    for axis, shape in ((1, [-1, 1]), (0, [-1, 1, 1])):  # x, then y
        size = width if axis == 1 else height
        # regular grid p0 + pk: (K, 1, ow, 1) for x, (K, oh, 1, 1) for y
        positions = g.reshape(_output_positions(g, params, axis, (oh, ow)), shape)
        regular = e.op("Add", _kernel_taps(g, params, axis), positions)
        base = e.op("Sub", e.op("Div", e.op("Add", e.op("Mul", regular, two), g.floats(1.0)), size),
                    g.floats(1.0))
        bases.append(e.op("Expand", base, g.shape([1, oh, ow, 1])))  # (K, oh, ow, 1)
    base = e.op("Concat", *bases, axis=-1)  # (K, oh, ow, 2)
    grid = e.op("Add", e.op("MatMul", offset, swap), base)  # (B, og, K, oh, ow, 2)
    # GridSample turns a huge, infinite or NaN coordinate into an out-of-range integer and then
    # reads some pixel. |x_norm| >= 3 is far outside the image whatever its size, so such
    # coordinates (and NaN, for which the test is false) are set to -3: outside, read as zero.
    within = e.op("Less", e.op("Abs", grid), g.floats(_GRID_LIMIT))
    grid = e.op("Where", within, grid, g.floats(-_GRID_LIMIT))

    images = g.product(g.batch, og)
    grid = g.reshape(grid, [images, taps, g.positions, 2])  # (B·og, K, L, 2)
    image = g.reshape(input, [images, cg, g.dim(input, 2), g.dim(input, 3)])  # (B·og, Cg, H, W)
    # GridSample-20 renamed the mode "bilinear" to "linear".
    mode = "linear" if e.opset >= 20 else "bilinear"
    columns = e.op("GridSample", image, grid, mode=mode, padding_mode="zeros", align_corners=0)
    # columns: (B·og, Cg, K, L)
    if params.use_mask:
        if mask is None:
            raise DeformConvExportError("mask: use_mask is True but no mask tensor was given")
        # Δm: (B, og·K, oh, ow) -> (B·og, 1, K, L)
        columns = e.op("Mul", columns, g.reshape(g.to_compute(mask), [images, 1, taps, g.positions]))
    return g.reshape(columns, [g.batch, og, cg, taps, g.positions, 1])


def _gather_rows_and_convolve(
    g: _Builder[V],
    params: DeformConvParams,
    input: V,
    index: V,
    corner_weight: V,
    weight: V,
    offset: V,
) -> V:
    """The default lowering: gather channel vectors, combine corners, apply the kernel.

    The input becomes a table of rows, one per (batch, padded pixel, offset group), each holding
    that pixel's Cg channels; one Gather reads the four corners of every sample at once. The
    sampled columns come out channels-last, (B, L, K·C), so the kernel is reordered once to
    (K·C, Cout) instead of transposing the (much larger) columns.

    Args:
        input: (B, C, H, W).
        index: (B, og, K, L, 4) int64 flat corner positions in the padded image.
        corner_weight: (B, og, K, L, 4).
        weight: (Cout, C/G, kh, kw).
        offset: the original offset, only for (oh, ow).

    Returns:
        (B, Cout, oh, ow), without bias.
    """
    e = g.e
    og, cg, taps = params.offset_groups, params.channels_per_offset_group, params.taps
    groups, cout = params.groups, params.out_channels
    before, after = [0, 0, _PAD_BEFORE, _PAD_BEFORE], [0, 0, _PAD_AFTER, _PAD_AFTER]
    padded = e.op("Pad", input, g.int64(before + after))  # (B, C, Hp, Wp)
    channels_last = e.op("Transpose", padded, perm=[0, 2, 3, 1])  # (B, Hp, Wp, C)
    padded_pixels = g.padded_pixels(input)  # Hp·Wp
    rows = g.reshape(channels_last, [g.product(g.batch, padded_pixels, og), cg])  # (B·Hp·Wp·og, Cg)

    # row of (b, pixel, group) = (b·Hp·Wp + pixel)·og + group; index: (B, L, K, og, 4)
    index = e.op("Transpose", index, perm=[0, 3, 2, 1, 4])
    if og > 1:
        index = e.op("Add", e.op("Mul", index, g.int64(og)), g.int64(np.arange(og).reshape(og, 1)))
    if g.batch != 1:
        images = e.op("Range", g.int64(0), g.reshape(g.as_value(g.batch), []), g.int64(1))  # (B,)
        first_row = e.op("Mul", images, g.as_value(g.product(padded_pixels, og)))
        index = e.op("Add", index, g.reshape(first_row, [g.batch, 1, 1, 1, 1]))
    corners = e.op("Gather", rows, index, axis=0)  # (B, L, K, og, 4, Cg)

    # corner_weight: (B, og, K, L, 4) -> (B, L, K, og, 1, 4)
    corner_weight = e.op("Transpose", corner_weight, perm=[0, 3, 2, 1, 4])
    corner_weight = g.reshape(corner_weight, [g.batch, g.positions, taps, og, 1, 4])
    samples = e.op("MatMul", corner_weight, corners)  # (B, L, K, og, 1, Cg)

    reduced = taps * params.channels_per_group
    # kernel: (Cout, C/G, kh, kw) -> (G, Cout/G, C/G, K) -> (G, K, C/G, Cout/G) -> (G, K·C/G, Cout/G)
    kernel = g.reshape(weight, [groups, cout // groups, params.channels_per_group, taps])
    kernel = g.reshape(e.op("Transpose", kernel, perm=[0, 3, 2, 1]), [groups, reduced, cout // groups])
    if groups == 1:
        columns = g.reshape(samples, [g.batch, 1, g.positions, reduced])  # (B, 1, L, K·C)
    else:
        # (B, L, K, G, C/G) -> (B, G, L, K, C/G) -> (B, G, L, K·C/G)
        columns = g.reshape(samples, [g.batch, g.positions, taps, groups, params.channels_per_group])
        columns = e.op("Transpose", columns, perm=[0, 3, 1, 2, 4])
        columns = g.reshape(columns, [g.batch, groups, g.positions, reduced])
    out = e.op("MatMul", columns, kernel)  # (B, G, L, Cout/G)
    out = e.op("Transpose", out, perm=[0, 1, 3, 2])  # (B, G, Cout/G, L)
    return g.reshape(out, [g.batch, cout, g.dim(offset, 2), g.dim(offset, 3)])


def _convolve_columns(
    g: _Builder[V], params: DeformConvParams, columns: V, weight: V, offset: V
) -> V:
    """The grouped 1×1 product of the kernel with the sampled columns.

    Args:
        columns: (B, og, Cg, K, L, 1); its memory order is (B, C, K, L) = (B, G, C/G, K, L).
        weight: (Cout, C/G, kh, kw).
        offset: the original offset, only for (oh, ow).

    Returns:
        (B, Cout, oh, ow).
    """
    groups, cout = params.groups, params.out_channels
    reduced = params.channels_per_group * params.taps
    columns = g.reshape(columns, [g.batch, groups, reduced, g.positions])  # (B, G, C/G·K, L)
    kernel = g.reshape(weight, [groups, cout // groups, reduced])  # (G, Cout/G, C/G·K)
    out = g.e.op("MatMul", kernel, columns)  # (B, G, Cout/G, L)
    return g.reshape(out, [g.batch, cout, g.dim(offset, 2), g.dim(offset, 3)])


class _Builder(Generic[V]):
    """Shape and constant helpers over an emitter, in one compute dtype."""

    def __init__(self, e: Emitter[V], dtype: type[np.floating], input: V, offset: V) -> None:
        self.e = e
        self.dtype = dtype
        self.onnx_dtype = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
        self._input = input
        self._offset = offset

    # Every reshape spells out its dimensions: a Reshape that copies (0) or infers (-1) a dimension
    # fails on an empty batch, and the legacy exporter's shape inference asserts on some of them.
    @functools.cached_property
    def batch(self) -> Dim[V]:
        """B, the batch size."""
        return self.dim(self._input, 0)

    @functools.cached_property
    def positions(self) -> Dim[V]:
        """L = oh·ow, the number of output positions."""
        return self.product(self.dim(self._offset, 2), self.dim(self._offset, 3))

    def product(self, *dims: Dim[V]) -> Dim[V]:
        """The product of dimensions: an int when all are static."""
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
            out = self.e.op("Mul", out, d)
        return out if static == 1 else self.e.op("Mul", out, self.int64([static]))

    def floats(self, value: Union[float, Sequence[float], np.ndarray]) -> V:
        return self.e.constant(np.asarray(value, dtype=self.dtype))

    def int64(self, value: Union[int, Sequence[int], np.ndarray]) -> V:
        return self.e.constant(np.asarray(value, dtype=np.int64))

    def to_compute(self, value: V) -> V:
        if self.e.elem_type(value) == self.onnx_dtype:
            return value
        return self.e.op("Cast", value, to=self.onnx_dtype)

    def dim(self, value: V, axis: int) -> Dim[V]:
        """value.shape[axis]: an int when static, else a (1,) int64 value read with Shape."""
        shape = self.e.static_shape(value)
        if shape is not None and shape[axis] is not None:
            return int(shape[axis])  # type: ignore[arg-type]
        return self.e.op("Gather", self.e.op("Shape", value), self.int64([axis]))

    def as_value(self, dim: Dim[V]) -> V:
        """A dimension as a (1,) int64 value."""
        return self.int64([dim]) if isinstance(dim, int) else dim

    def padded_pixels(self, input: V) -> Dim[V]:
        """Hp·Wp, the pixels of the input padded for the gather lowerings."""
        pad = _PAD_BEFORE + _PAD_AFTER
        return self.product(self.dim_plus(input, 2, pad), self.dim_plus(input, 3, pad))

    def dim_plus(self, value: V, axis: int, extra: int) -> V:
        """value.shape[axis] + extra as a (1,) int64 value."""
        dim = self.dim(value, axis)
        if isinstance(dim, int):
            return self.int64([dim + extra])
        return self.e.op("Add", dim, self.int64([extra]))

    def dim_as_float(self, value: V, axis: int) -> V:
        """value.shape[axis] as a compute-dtype scalar-like (1,) value."""
        dim = self.dim(value, axis)
        if isinstance(dim, int):
            return self.floats([float(dim)])
        return self.e.op("Cast", dim, to=self.onnx_dtype)

    def shape(self, dims: Sequence[Dim[V]]) -> V:
        """A 1-D int64 shape tensor from ints and (1,) values."""
        if all(isinstance(d, int) for d in dims):
            return self.int64([int(d) for d in dims])  # type: ignore[arg-type]
        return self.e.op("Concat", *[self.int64([d]) if isinstance(d, int) else d for d in dims], axis=0)

    def reshape(self, value: V, shape: Sequence[Dim[V]]) -> V:
        """Reshape to ``shape``, whose entries are ints or (1,) values."""
        return self.e.op("Reshape", value, self.shape(shape))

    def reduce_sum_last(self, value: V) -> V:
        """Sum over the last axis, keeping it as size 1 (axes moved to an input in opset 13)."""
        if self.e.opset >= 13:
            return self.e.op("ReduceSum", value, self.int64([-1]), keepdims=1)
        return self.e.op("ReduceSum", value, axes=[-1], keepdims=1)

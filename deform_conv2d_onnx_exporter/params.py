"""The parameters of one ``torchvision::deform_conv2d`` call, validated once for every adapter.

The adapters read the operator's integer arguments and the static parts of its input shapes,
build a :class:`DeformConvParams`, and hand it to the core. Everything the core needs to know at
export time lives here; everything else (batch size, image size) may stay symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

#: A shape as an adapter sees it at export time: ``None`` for an unknown rank, ``None`` entries for
#: dimensions that are symbolic.
StaticShape = Optional[Sequence[Optional[int]]]


class DeformConvExportError(ValueError):
    """A ``deform_conv2d`` call that cannot be exported to a correct ONNX graph."""


@dataclass(frozen=True)
class DeformConvParams:
    """Everything about a ``deform_conv2d`` call that is fixed at export time.

    Pairs are (height, width), that is y before x, as in torchvision.

    Attributes:
        stride: distance between two output positions, in input pixels.
        padding: zeros conceptually added on each side; samples only see the unpadded image, so
            padding only shifts the sampling grid by ``-padding``.
        dilation: spacing between kernel taps.
        groups: convolution groups (``in_channels // weight.shape[1]``).
        offset_groups: channel groups that share one set of offsets and masks.
        use_mask: True for DCNv2 (modulated); False for DCNv1, where the mask input is a dummy.
        kernel: (kh, kw), from ``weight.shape[2:]``.
        in_channels: C, the input's channel count (``groups * weight.shape[1]``).
        out_channels: Cout, ``weight.shape[0]``.
    """

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    offset_groups: int
    use_mask: bool
    kernel: tuple[int, int]
    in_channels: int
    out_channels: int

    @property
    def taps(self) -> int:
        """K = kh · kw, the number of sampling points per output position."""
        return self.kernel[0] * self.kernel[1]

    @property
    def channels_per_offset_group(self) -> int:
        """C / offset_groups: the channels that share one sampling pattern."""
        return self.in_channels // self.offset_groups

    @property
    def channels_per_group(self) -> int:
        """C / groups: the input channels one output channel reads."""
        return self.in_channels // self.groups

    @classmethod
    def from_call(
        cls,
        *,
        input_shape: StaticShape,
        weight_shape: StaticShape,
        offset_shape: StaticShape,
        mask_shape: StaticShape,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        offset_groups: int,
        use_mask: bool,
    ) -> DeformConvParams:
        """Validate one call and return its parameters.

        Args:
            input_shape: (B, C, H, W) as far as known.
            weight_shape: (Cout, C / groups, kh, kw); must be fully static.
            offset_shape: (B, 2 · offset_groups · kh · kw, oh, ow) as far as known.
            mask_shape: (B, offset_groups · kh · kw, oh, ow) as far as known; ignored without mask.
            stride, padding, dilation: (h, w) pairs.
            groups, offset_groups: group counts.
            use_mask: whether the mask is applied.

        Raises:
            DeformConvExportError: naming the argument, what was expected and what was got.
        """
        _check_pair("stride", stride, minimum=1)
        _check_pair("padding", padding, minimum=0)
        _check_pair("dilation", dilation, minimum=1)
        _check_positive("groups", groups)
        _check_positive("offset_groups", offset_groups)

        _check_rank("input", input_shape, "(batch, in_channels, height, width)")
        _check_rank("offset", offset_shape, "(batch, 2 * offset_groups * kh * kw, out_h, out_w)")
        weight = _static_weight_shape(weight_shape)
        out_channels, group_channels, kh, kw = weight
        _check_batch(input_shape, offset_shape, mask_shape if use_mask else None)
        _check_channel_counts(
            input_shape, offset_shape, mask_shape if use_mask else None, weight, groups, offset_groups
        )
        return cls(
            stride=(int(stride[0]), int(stride[1])),
            padding=(int(padding[0]), int(padding[1])),
            dilation=(int(dilation[0]), int(dilation[1])),
            groups=int(groups),
            offset_groups=int(offset_groups),
            use_mask=bool(use_mask),
            kernel=(kh, kw),
            in_channels=groups * group_channels,
            out_channels=out_channels,
        )


def _check_channel_counts(
    input_shape: StaticShape,
    offset_shape: StaticShape,
    mask_shape: StaticShape,
    weight: tuple[int, int, int, int],
    groups: int,
    offset_groups: int,
) -> None:
    """The channel counts of input, offset and mask (None: not read) against the weight and groups."""
    out_channels, group_channels, kh, kw = weight
    in_channels = groups * group_channels
    if out_channels % groups != 0:
        raise DeformConvExportError(
            f"weight: out_channels (weight.shape[0]) must be divisible by groups={groups}, "
            f"got weight.shape={tuple(weight)}"
        )
    if input_shape is not None and input_shape[1] is not None and input_shape[1] != in_channels:
        raise DeformConvExportError(
            f"input: expected in_channels = groups * weight.shape[1] = {groups} * "
            f"{group_channels} = {in_channels}, got input.shape[1]={input_shape[1]}"
        )
    if in_channels % offset_groups != 0:
        raise DeformConvExportError(
            f"offset_groups: in_channels={in_channels} must be divisible by offset_groups={offset_groups}"
        )
    taps = kh * kw
    _check_channels(
        "offset",
        offset_shape,
        2 * offset_groups * taps,
        f"2 * offset_groups * kh * kw = 2 * {offset_groups} * {kh} * {kw}",
    )
    if mask_shape is not None:
        _check_rank("mask", mask_shape, "(batch, offset_groups * kh * kw, out_h, out_w)")
        _check_channels(
            "mask",
            mask_shape,
            offset_groups * taps,
            f"offset_groups * kh * kw = {offset_groups} * {kh} * {kw}",
        )


def _check_batch(input_shape: StaticShape, offset_shape: StaticShape, mask_shape: StaticShape) -> None:
    """Offset and mask (None: not read) have the input's batch size, where static."""
    batch = input_shape[0] if input_shape else None
    for name, shape in (("offset", offset_shape), ("mask", mask_shape)):
        if batch is not None and shape and shape[0] is not None and shape[0] != batch:
            raise DeformConvExportError(
                f"{name}: expected the input's batch size {batch}, got {name}.shape[0]={shape[0]} "
                f"(shape {show_shape(shape)})"
            )


def _check_pair(name: str, pair: tuple[int, int], *, minimum: int) -> None:
    if len(pair) != 2 or any(not isinstance(v, int) or isinstance(v, bool) for v in pair):
        raise DeformConvExportError(f"{name}: expected a pair of ints (h, w), got {pair!r}")
    if min(pair) < minimum:
        raise DeformConvExportError(f"{name}: expected values >= {minimum}, got {tuple(pair)}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DeformConvExportError(f"{name}: expected a positive int, got {value!r}")


def _check_rank(name: str, shape: StaticShape, layout: str) -> None:
    if shape is not None and len(shape) != 4:
        raise DeformConvExportError(
            f"{name}: expected a 4-D tensor {layout}, got {len(shape)}-D shape {show_shape(shape)}"
        )


def _check_channels(name: str, shape: StaticShape, expected: int, formula: str) -> None:
    if shape is not None and shape[1] is not None and shape[1] != expected:
        raise DeformConvExportError(
            f"{name}: expected {expected} channels ({formula}), "
            f"got {name}.shape[1]={shape[1]} (shape {show_shape(shape)})"
        )


def _static_weight_shape(shape: StaticShape) -> tuple[int, int, int, int]:
    layout = "(out_channels, in_channels / groups, kh, kw)"
    if shape is None or len(shape) != 4:
        got = "an unknown rank" if shape is None else f"{len(shape)}-D shape {show_shape(shape)}"
        raise DeformConvExportError(f"weight: expected a 4-D tensor {layout}, got {got}")
    if any(d is None for d in shape):
        raise DeformConvExportError(
            f"weight: the kernel shape {layout} must be static at export time, got {show_shape(shape)}"
        )
    dims = tuple(int(d) for d in shape if d is not None)
    if min(dims) < 1:
        raise DeformConvExportError(f"weight: expected every dimension >= 1, got {show_shape(shape)}")
    return dims[0], dims[1], dims[2], dims[3]


def show_shape(shape: StaticShape) -> str:
    """A shape for an error message: ``(1, ?, 7, 9)``, ``?`` for a symbolic dimension."""
    if shape is None:
        return "an unknown shape"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"

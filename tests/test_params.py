"""Validation of a call's parameters: each bad input names the argument, the expectation and the value."""

from __future__ import annotations

from typing import Any

import pytest

from deform_conv2d_onnx_exporter.params import DeformConvExportError, DeformConvParams

GOOD: dict[str, Any] = dict(
    input_shape=(2, 8, 10, 12),
    weight_shape=(6, 4, 3, 3),
    offset_shape=(2, 36, 10, 12),
    mask_shape=(2, 18, 10, 12),
    stride=(1, 1),
    padding=(1, 1),
    dilation=(1, 1),
    groups=2,
    offset_groups=2,
    use_mask=True,
)


def test_good_call() -> None:
    params = DeformConvParams.from_call(**GOOD)
    assert params.in_channels == 8 and params.out_channels == 6 and params.taps == 9
    assert params.channels_per_group == 4 and params.channels_per_offset_group == 4


def test_symbolic_sizes_are_accepted() -> None:
    params = DeformConvParams.from_call(
        **{
            **GOOD,
            "input_shape": (None, 8, None, None),
            "offset_shape": (None, None, None, None),
            "mask_shape": None,
        }
    )
    assert params.kernel == (3, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"offset_shape": (2, 18, 10, 12)}, r"offset: expected 36 channels .*got offset.shape\[1\]=18"),
        ({"mask_shape": (2, 9, 10, 12)}, r"mask: expected 18 channels .*got mask.shape\[1\]=9"),
        ({"input_shape": (8, 10, 12)}, r"input: expected a 4-D tensor .*got 3-D"),
        ({"input_shape": (2, 6, 10, 12)}, r"input: expected in_channels = .* = 8, got input.shape\[1\]=6"),
        ({"offset_groups": 3}, r"offset_groups: in_channels=8 must be divisible by offset_groups=3"),
        ({"weight_shape": (5, 4, 3, 3)}, r"weight: out_channels .* divisible by groups=2"),
        ({"weight_shape": (6, 4, None, 3)}, r"weight: the kernel shape .* must be static.*\(6, 4, \?, 3\)"),
        ({"weight_shape": None}, r"weight: expected a 4-D tensor .*unknown rank"),
        ({"stride": (0, 1)}, r"stride: expected values >= 1, got \(0, 1\)"),
        ({"padding": (-1, 0)}, r"padding: expected values >= 0, got \(-1, 0\)"),
        ({"dilation": (1,)}, r"dilation: expected a pair of ints"),
        ({"groups": 0}, r"groups: expected a positive int, got 0"),
    ],
)
def test_bad_call_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(DeformConvExportError, match=message):
        DeformConvParams.from_call(**{**GOOD, **change})


def test_mask_shape_is_ignored_without_mask() -> None:
    params = DeformConvParams.from_call(**{**GOOD, "mask_shape": (2, 1), "use_mask": False})
    assert not params.use_mask

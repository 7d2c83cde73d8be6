"""Inputs at the edges of the domain, for every lowering, against torchvision's kernel."""

from __future__ import annotations

import math

import pytest
import torch
from support import (
    EXPORTERS,
    LOWERINGS,
    Case,
    DeformConvCall,
    assert_matches,
    export,
    input_names,
    make_inputs,
    run,
)

EXTREMES = [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e4, -1e4]


@pytest.mark.parametrize("lowering", list(LOWERINGS))
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_extreme_offsets_sample_zero(exporter: str, lowering: str) -> None:
    """A sample whose offset is NaN, infinite or huge lies outside the image: it reads zero.

    torchvision agrees for the finite and infinite ones; on a NaN offset its CPU kernel reads out
    of bounds (it crashed the process here), so the expected value is taken with 1e4 instead.
    """
    case = Case(height=6, width=5)
    module, names = DeformConvCall(case), input_names(case)
    model = export(module, make_inputs(case), exporter, lowering, names)
    for i, value in enumerate(EXTREMES):
        x, offset, mask = make_inputs(case, seed=i)
        offset[0, 2 * i % offset.shape[1], i % 3, i % 4] = value
        offset[0, 5, 1, 1] = value
        finite = torch.nan_to_num(offset, nan=1e4)
        assert_matches(run(model, names, (x, offset, mask)), module(x, finite, mask), torch.float32)


@pytest.mark.parametrize("lowering", list(LOWERINGS))
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_empty_batch(exporter: str, lowering: str) -> None:
    """torchvision maps a batch of 0 to an empty output; so does the model, exported at batch 2."""
    case = Case(offset_groups=2)
    module, names = DeformConvCall(case), input_names(case)
    model = export(module, make_inputs(case, batch=2), exporter, lowering, names, dynamic=True)
    empty = tuple(t[:0] for t in make_inputs(case))
    assert_matches(run(model, names, empty), module(*empty), torch.float32)

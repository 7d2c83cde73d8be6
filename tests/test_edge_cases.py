"""Inputs at the edges of the domain, for every lowering, against torchvision's kernel."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx_models import reference_evaluator
from support import (
    EXPORTERS,
    LOWERINGS,
    ORT_EMPTY_BATCH_MATMUL,
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
    ``grid_sample_ncnn`` has no comparison to catch a NaN: the outputs that read that sample are
    undefined (NaN on ncnn, some pixel on ONNX Runtime, as in torchvision), the others match.
    """
    case = Case(height=6, width=5)
    module, names = DeformConvCall(case), input_names(case)
    model = export(module, make_inputs(case), exporter, lowering, names)
    for i, value in enumerate(EXTREMES):
        x, offset, mask = make_inputs(case, seed=i)
        offset[0, 2 * i % offset.shape[1], i % 3, i % 4] = value
        offset[0, 5, 1, 1] = value
        got = run(model, names, (x, offset, mask))
        expected = module(x, torch.nan_to_num(offset, nan=1e4), mask)
        if lowering == "grid_sample_ncnn" and math.isnan(value):
            # undefined where the NaN is read, as in torchvision; exact everywhere else
            read = torch.isnan(offset).any(dim=1, keepdim=True).expand_as(expected)
            got, expected = got[~read.numpy()], expected[~read]
        assert_matches(got, expected, torch.float32)


@pytest.mark.parametrize("lowering", list(LOWERINGS))
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_empty_batch(exporter: str, lowering: str) -> None:
    """torchvision maps a batch of 0 to an empty output; so does the model, exported at batch 2."""
    case = Case(offset_groups=2)
    module, names = DeformConvCall(case), input_names(case)
    model = export(module, make_inputs(case, batch=2), exporter, lowering, names, dynamic=True)
    empty = tuple(t[:0] for t in make_inputs(case))
    if not ORT_EMPTY_BATCH_MATMUL and lowering.startswith("grid_sample"):
        # It applies the kernel with one MatMul broadcast over the batch, which this ONNX
        # Runtime refuses for a batch of 0 (README, "Limits").
        with pytest.raises(Exception, match="cannot broadcast"):
            run(model, names, empty)
        return
    assert_matches(run(model, names, empty), module(*empty), torch.float32)


EDGE_CASES = {
    "1x1 image": Case(height=1, width=1, kernel=(1, 1), padding=(0, 0)),
    "1-pixel-high image": Case(height=1, width=9, kernel=(3, 3), padding=(1, 1)),
    "1-pixel-wide image": Case(height=8, width=1, kernel=(2, 3), padding=(0, 1)),
    "1x1 output": Case(height=5, width=4, kernel=(5, 4), padding=(0, 0)),
    "kernel larger than the image": Case(height=3, width=4, kernel=(7, 6), padding=(3, 3)),
    "stride larger than the kernel": Case(height=11, width=13, kernel=(2, 3), stride=(4, 5), padding=(0, 1)),
    "no padding, offsets pointing outside": Case(height=6, width=6, padding=(0, 0)),
    "many channels in groups": Case(
        in_channels=256, out_channels=64, height=6, width=5, groups=8, offset_groups=16
    ),
}


@pytest.mark.parametrize("lowering", list(LOWERINGS))
@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_configuration(name: str, lowering: str) -> None:
    case = EDGE_CASES[name]
    module, names = DeformConvCall(case), input_names(case)
    model = export(module, make_inputs(case), "legacy", lowering, names)
    for seed in (1, 2):
        inputs = make_inputs(case, seed=seed)
        if name == "no padding, offsets pointing outside":
            inputs = (inputs[0], inputs[1].abs() * 3 + 2, *inputs[2:])  # every tap pushed down-right
        assert_matches(run(model, names, inputs), module(*inputs), torch.float32)


@pytest.mark.reference_evaluator
@pytest.mark.parametrize("lowering", list(LOWERINGS))
def test_reference_evaluator_agrees(lowering: str) -> None:
    """A second oracle: ONNX's reference evaluator runs the same models (and native DeformConv).

    Its GatherElements uses NumPy's choose, which takes at most 32 choices before NumPy 2 (64
    from 2); it gathers from the rows of every padded pixel and offset group, (2 + 3)·(3 + 3) = 30.
    """
    case = Case(height=2, width=3, stride=(1, 2))
    module, names, inputs = DeformConvCall(case), input_names(case), make_inputs(case)
    model = export(module, inputs, "legacy", lowering, names)
    (got,) = reference_evaluator(onnx.load_from_string(model)).run(
        None, {n: t.numpy() for n, t in zip(names, inputs)}
    )
    assert_matches(got, module(*inputs), torch.float32)


@pytest.mark.parametrize("lowering", list(LOWERINGS))
def test_nonfinite_input_spreads_like_torchvision(lowering: str) -> None:
    """An Inf or NaN pixel makes the same outputs Inf or NaN as in torchvision, the rest match."""
    case = Case(in_channels=2, out_channels=1, height=5, width=5, mask=False, bias=False)
    module, names = DeformConvCall(case), input_names(case)
    x, offset = make_inputs(case)
    x[0, 0, 2, 2], x[0, 1, 4, 0] = math.inf, math.nan
    model = export(module, (x, offset), "legacy", lowering, names)
    for offsets in (torch.zeros_like(offset), torch.full_like(offset, 0.5), offset):
        got = run(model, names, (x, offsets))
        expected = module(x, offsets).detach().numpy()
        assert (np.isnan(got) == np.isnan(expected)).all() and (np.isinf(got) == np.isinf(expected)).all()
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got[finite], expected[finite], atol=1e-4, rtol=1e-4)

"""The configuration sweep: every feature of deform_conv2d × both exporters × every lowering.

Each exported model has a symbolic batch and is run at batch 1 and 3, so batch > 1 is covered by
every case. ``pytest --full-sweep`` (``nox -s sweep``) runs the cartesian product instead of the
curated set below.
"""

from __future__ import annotations

import itertools

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


def curated_cases() -> list[Case]:
    """Every feature at least once, most of them in combination with others."""
    base = Case()
    return [
        base,
        base.with_(padding=(0, 0), stride=(2, 1)),
        base.with_(padding=(2, 1), dilation=(2, 1)),
        base.with_(kernel=(1, 1), padding=(0, 0)),
        base.with_(kernel=(7, 7), padding=(3, 3)),  # kernel as large as the image
        base.with_(kernel=(3, 2), stride=(1, 2), dilation=(1, 2), padding=(0, 2)),
        base.with_(kernel=(2, 5), stride=(3, 2), padding=(1, 0), height=11, width=12),
        base.with_(groups=2),
        base.with_(offset_groups=2),
        base.with_(in_channels=8, out_channels=4, groups=2, offset_groups=4),
        base.with_(mask=False),
        base.with_(bias=False),
        base.with_(mask=False, bias=False, offset_groups=2, stride=(2, 2), padding=(0, 1)),
        base.with_(height=1, width=1, kernel=(1, 1), padding=(0, 0)),
    ]


def full_cases() -> list[Case]:
    """The cartesian product of the options, each with h != w where it is a pair."""
    cases = []
    for stride, padding, dilation, kernel, (groups, og), mask, bias in itertools.product(
        [(1, 1), (2, 1)],
        [(0, 0), (1, 2)],
        [(1, 1), (1, 2)],
        [(1, 1), (3, 2), (3, 3), (7, 7)],
        [(1, 1), (2, 1), (1, 2), (2, 4)],
        [True, False],
        [True, False],
    ):
        case = Case(
            in_channels=8,
            height=9,
            width=10,
            kernel=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            offset_groups=og,
            mask=mask,
            bias=bias,
        )
        if min(case.out_size) >= 1:
            cases.append(case)
    return cases


@pytest.mark.parametrize("lowering", list(LOWERINGS))
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_matches_torchvision(sweep_case: Case, exporter: str, lowering: str) -> None:
    module = DeformConvCall(sweep_case)
    names = input_names(sweep_case)
    model = export(module, make_inputs(sweep_case), exporter, lowering, names, dynamic=True)
    for batch, seed in [(1, 2), (3, 3)]:
        inputs = make_inputs(sweep_case, batch=batch, seed=seed)
        assert_matches(run(model, names, inputs), module(*inputs), torch.float32)

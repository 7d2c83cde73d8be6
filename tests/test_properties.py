"""Property-based tests: random configurations and adversarial data, against torchvision's kernel.

The default profile ("ci", registered in conftest.py) runs a fixed, derandomised budget;
``pytest --hypothesis-profile=fuzz`` (``nox -s fuzz``) runs 500 random examples.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from support import (
    EXPORTERS,
    LOWERINGS,
    Case,
    DeformConvCall,
    assert_matches,
    export,
    input_names,
    missing_path,
    run,
)

#: Lowerings that compute the sampling point with torchvision's own float32 arithmetic.
_BIT_FAITHFUL = {"gather_rows", "gathernd", "gatherelements"}
#: (exporter, lowering) pairs the installed torch and ONNX Runtime have.
_PATHS = [(e, lowering) for e in EXPORTERS for lowering in LOWERINGS if missing_path(e, lowering) is None]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    groups = draw(st.integers(1, 3))
    offset_groups = draw(st.integers(1, 3))
    in_channels = groups * offset_groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    # The smallest image with an output: dilation·(k − 1) + 1 − 2·padding.
    height = draw(st.integers(max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0]), 40))
    width = draw(st.integers(max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1]), 40))
    return Case(in_channels=in_channels, out_channels=groups * draw(st.integers(1, 2)),
                height=height, width=width, kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, groups=groups, offset_groups=offset_groups,
                mask=draw(st.booleans()), bias=draw(st.booleans()), batch=draw(st.integers(1, 3)))


@st.composite
def data(draw: st.DrawFn, case: Case) -> tuple[torch.Tensor, ...]:
    """(x, offset[, mask]) with offsets from tiny to far outside, and samples put exactly on
    integers and on the window's edges (−1, 0, H−1, H), where the zero rules switch."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    (kh, kw), (oh, ow) = case.kernel, case.out_size
    og, b = case.offset_groups, case.batch
    scale = draw(st.sampled_from([1e-3, 0.5, float(max(kh, kw)), 50.0, 1e4]))
    offset = rng.standard_normal((b, og, kh, kw, 2, oh, ow)) * scale

    special = draw(st.sampled_from([0.0, 0.3, 1.0]))
    if special:
        # regular grid p0 + pk per (kh, kw, oh, ow) and axis
        i, j, oy, ox = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(oh), np.arange(ow),
                                   indexing="ij")
        base = [oy * case.stride[0] - case.padding[0] + i * case.dilation[0],
                ox * case.stride[1] - case.padding[1] + j * case.dilation[1]]
        for axis, size in ((0, case.height), (1, case.width)):
            targets = np.array([-1, 0, size - 1, size, -2, size + 1, size // 2])
            chosen = rng.choice(targets, size=offset[..., axis, :, :].shape)
            on_target = rng.random(chosen.shape) < special
            offset[..., axis, :, :] = np.where(on_target, chosen - base[axis],
                                               offset[..., axis, :, :])
    x = rng.standard_normal((b, case.in_channels, case.height, case.width))
    inputs = [x, offset.reshape(b, og * kh * kw * 2, oh, ow)]
    if case.mask:
        mask = rng.random((b, og * kh * kw, oh, ow)) * 1.5
        mask[rng.random(mask.shape) < 0.1] = 0.0
        inputs.append(mask)
    return tuple(torch.from_numpy(a.astype(np.float32)) for a in inputs)


@given(case=cases(), path=st.sampled_from(_PATHS), draw_inputs=st.data())
def test_matches_torchvision(case: Case, path: tuple[str, str], draw_inputs: st.DataObject) -> None:
    exporter, lowering = path
    inputs = draw_inputs.draw(data(case))
    module, names = DeformConvCall(case), input_names(case)
    got = run(export(module, inputs, exporter, lowering, names), names, inputs)
    expected = module(*inputs).detach()
    if lowering in _BIT_FAITHFUL:
        assert_matches(got, expected, torch.float32)
        return
    # grid_sample and native compute the sampling point their own way: judge them against
    # float64 arithmetic, allowing 3x torchvision's own float32 error there.
    exact = copy.deepcopy(module).double()(*(t.double() for t in inputs)).detach().numpy()
    floor = 1e-5 * max(1.0, float(np.abs(exact).max()))
    torchvision_error = float(np.abs(expected.numpy() - exact).max())
    assert float(np.abs(got - exact).max()) <= 3 * torchvision_error + floor

"""``export`` past the dynamo exporter's refusals: no_grad, the legacy fallback, symbolic channel counts.

``torch.export`` (its ``Dim``) is imported inside the tests that use it: torch 2.0 has none.
"""

from __future__ import annotations

import inspect
import logging
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import torchvision
from support import TOLERANCE

import deform_conv2d_onnx_exporter as dce
from deform_conv2d_onnx_exporter.onnxscript_adapter import _static_group_counts
from deform_conv2d_onnx_exporter.schema import DeformConv2dCall

_log = logging.getLogger(__name__)


class LoggingAlignment(torch.nn.Module):
    """DCNv2 alignment as in EDVR, behind a logging branch that reads the data.

    torch.export cannot trace ``if`` on a tensor's value; the legacy exporter's tracer takes the
    branch the example takes. x: (B, 4, H, W) -> (B, 6, H, W).
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.offset = torch.nn.Conv2d(4, 18, 3, padding=1)
        self.mask = torch.nn.Conv2d(4, 9, 3, padding=1)
        self.dcn = torchvision.ops.DeformConv2d(4, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset(x)
        if offset.abs().mean() > 50:
            _log.warning("offset mean is more than 50: the alignment is probably off")
        return self.dcn(x, offset, torch.sigmoid(self.mask(x)))


class SymbolicChannels(torch.nn.Module):
    """A reshape with -1 over height and width before the deformable convolution.

    x: (B, 3, H, W) -> feat: (B, 3·H·W / (H/2 · W/2), H/2, W/2), 12 channels for even H and W,
    but an expression of H and W unless dynamic_shapes says they are even. -> (B, 8, H/2, W/2).
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.offset = torch.nn.Conv2d(3, 18, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.randn(8, 12, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        feat = x.reshape(b, -1, h // 2, w // 2)
        offset = self.offset(F.avg_pool2d(x, 2))
        return torchvision.ops.deform_conv2d(feat, offset, self.weight, padding=1)


#: Whether autograd was enabled each time GradProbe.forward ran (torch.export traces a copy of
#: the module, so the record is kept outside it).
_grad_enabled: list[bool] = []


class GradProbe(torch.nn.Module):
    """Records whether autograd was enabled each time forward runs. x: (B, 2, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.dcn = torchvision.ops.DeformConv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _grad_enabled.append(torch.is_grad_enabled())
        return self.dcn(x, torch.zeros(x.shape[0], 18, x.shape[2], x.shape[3]))


def _run_matches(path: Path, module: torch.nn.Module, x: torch.Tensor) -> None:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    atol, rtol = TOLERANCE[torch.float32]
    np.testing.assert_allclose(got, module(x).detach().numpy(), atol=atol, rtol=rtol)


def _our_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, dce.DeformConvWarning)]


@pytest.mark.dynamo_default
def test_default_export_falls_back_to_the_legacy_exporter(tmp_path: Path) -> None:
    from torch.export import Dim

    module, path = LoggingAlignment().eval(), tmp_path / "model.onnx"
    shapes = ({0: Dim("batch", max=64), 2: Dim("height", min=4), 3: Dim("width", min=4)},)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dce.export(module, (torch.randn(2, 4, 12, 10),), str(path), dynamic_shapes=shapes)
    (message,) = _our_warnings(caught)
    assert "dynamo exporter failed" in message and "legacy exporter instead" in message
    graph = onnx.load(str(path)).graph
    assert "DeformConv" not in {node.op_type for node in graph.node}
    # dynamic_shapes became dynamic_axes with the Dim names, under forward's parameter name
    (graph_input,) = graph.input
    dims = [d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, dims) == ("x", ["batch", "", "height", "width"])
    for size in [(2, 4, 12, 10), (3, 4, 7, 9)]:
        _run_matches(path, module, torch.randn(*size))


@pytest.mark.dynamo_default
def test_fallback_is_one_clean_line_from_the_callers_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing reaches the terminal but our warning; torch's output is logged at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="deform_conv2d_onnx_exporter")
    module, x = LoggingAlignment().eval(), torch.randn(2, 4, 12, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        dce.export(module, (x,), str(tmp_path / "model.onnx"))
    assert capfd.readouterr() == ("", "")
    (warning,) = [w for w in caught if w.category is dce.DeformConvWarning]
    assert (warning.filename, warning.lineno) == (__file__, line)
    message = str(warning.message)
    assert "\n" not in message and "\x1b" not in message, message
    # the cause torch.export names, not its generic wrapper's first line alone
    assert "data-dependent" in message
    held_back = "\n".join(record.getMessage() for record in caplog.records)
    assert "Converting a tensor to a Python boolean" in held_back  # the legacy tracer's TracerWarning
    assert any(record.exc_info for record in caplog.records)  # the dynamo exporter's error


@pytest.mark.dynamo_default
def test_a_default_export_that_succeeds_shows_what_torch_prints(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Output is held back only to decide whether to show it: without a fallback it is shown."""
    dce.export(GradProbe().eval(), (torch.randn(1, 2, 5, 5),), str(tmp_path / "model.onnx"))
    assert "[torch.onnx]" in capfd.readouterr().out  # torch's progress lines


# torch 2.6 - 2.8's dynamo exporter falls back by itself to other ways of capturing the model
# (torch.jit.trace among them) and exports LoggingAlignment; from 2.9 it refuses it.
@pytest.mark.dynamo
@pytest.mark.dynamo_default
def test_explicit_dynamo_never_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Exception) as raised:  # noqa: B017 - torch's error type varies by release
            dce.export(LoggingAlignment().eval(), (torch.randn(1, 4, 8, 8),), str(path), dynamo=True)
    assert not isinstance(raised.value, dce.DeformConvExportError)
    assert _our_warnings(caught) == []
    assert list(tmp_path.iterdir()) == []


class WrongMask(torch.nn.Module):
    """A mask with 8 channels where a 3x3 kernel needs 9; torch.export does not check it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(2, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return torchvision.ops.deform_conv2d(
            x, torch.zeros(b, 18, h, w), self.weight, padding=1, mask=torch.ones(b, 8, h, w)
        )


@pytest.mark.dynamo_default
def test_our_error_is_never_hidden_by_the_fallback(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(dce.DeformConvExportError, match=r"mask: expected 9 channels"):
            dce.export(WrongMask(), (torch.randn(1, 2, 6, 6),), str(path))
    assert _our_warnings(caught) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("no_grad", [True, False])
def test_export_runs_without_autograd_unless_asked(tmp_path: Path, exporter: str, no_grad: bool) -> None:
    _grad_enabled.clear()
    dce.export(
        GradProbe().eval(),
        (torch.randn(1, 2, 5, 5),),
        str(tmp_path / "model.onnx"),
        dynamo=exporter == "dynamo",
        no_grad=no_grad,
    )
    assert _grad_enabled and set(_grad_enabled) == {not no_grad}
    assert torch.is_grad_enabled()


@pytest.mark.dynamo
@pytest.mark.symbolic_sizes
def test_symbolic_channel_count_names_the_dynamic_shapes_that_avoid_it(tmp_path: Path) -> None:
    from torch.export import Dim

    module, path = SymbolicChannels().eval(), tmp_path / "model.onnx"
    x = torch.randn(2, 3, 16, 20)
    plain = ({0: Dim("batch", max=64), 2: Dim("h", min=4), 3: Dim("w", min=4)},)
    try:
        dce.export(module, (x,), str(path), dynamo=True, dynamic_shapes=plain)
    except dce.DeformConvExportError as error:  # torch 2.14 and 2.15
        assert re.match(r"groups: expected an int, got a symbolic value .*4 \* Dim\('hq'\)", str(error))
        assert not path.exists()
    else:  # torch 2.9 specialises the channel count to the example's
        _run_matches(path, module, x)
    multiples = ({0: Dim("batch", max=64), 2: 2 * Dim("hq", min=2), 3: 2 * Dim("wq", min=2)},)
    dce.export(module, (x,), str(path), dynamo=True, dynamic_shapes=multiples)
    for size in [(2, 3, 16, 20), (1, 3, 10, 6)]:
        _run_matches(path, module, torch.randn(*size))


def _value(*shape: object) -> SimpleNamespace:
    """A stand-in for the dynamo exporter's value: its shape, with strings for symbolic sizes."""
    return SimpleNamespace(shape=list(shape))


def _counts(input: SimpleNamespace, offset: SimpleNamespace, groups: object, offset_groups: object) -> tuple:
    """(groups, offset_groups) of a call with a (8, 6, 3, 3) weight, as the translation sees them."""
    call = DeformConv2dCall.bind(
        input, _value(8, 6, 3, 3), offset, None, None, 1, 1, 1, 1, 1, 1, groups, offset_groups, False
    )
    done = _static_group_counts(call).constants
    return done["groups"], done["offset_groups"]


def test_group_counts_come_from_static_shapes_where_they_can() -> None:
    symbolic = object()  # what the exporter hands over for a count it traced as an expression
    assert _counts(_value(2, 12, 8, 8), _value(2, 36, 8, 8), symbolic, symbolic) == (2, 2)
    assert _counts(_value(2, "s1", 8, 8), _value(2, 18, 8, 8), 2, symbolic) == (2, 1)
    with pytest.raises(dce.DeformConvExportError, match=r"offset_groups: .*with channels s3\*2"):
        _counts(_value(2, 12, 8, 8), _value(2, "s3*2", 8, 8), symbolic, symbolic)


def test_legacy_exporter_takes_dynamic_shapes_as_dynamic_axes(tmp_path: Path) -> None:
    module, path = LoggingAlignment().eval(), tmp_path / "model.onnx"
    # by forward's parameter name, with names as strings (torch 2.0 has no torch.export.Dim)
    dce.export(
        module,
        (torch.randn(2, 4, 12, 10),),
        str(path),
        dynamo=False,
        dynamic_shapes={"x": {0: "batch", 2: "height", 3: "width"}},
    )
    (graph_input,) = onnx.load(str(path)).graph.input
    dims = [d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, dims) == ("x", ["batch", "", "height", "width"])
    _run_matches(path, module, torch.randn(3, 4, 7, 9))

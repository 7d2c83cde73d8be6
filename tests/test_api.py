"""The public API: registration state, export's choices, version detection and clear errors."""

from __future__ import annotations

import copy
import inspect
import io
import os
import warnings

import numpy as np
import onnx
import pytest
import torch
import torchvision
from support import (
    EXPORTERS,
    Case,
    DeformConvCall,
    assert_matches,
    export,
    input_names,
    make_inputs,
    run,
)

import deform_conv2d_onnx_exporter as dce
from deform_conv2d_onnx_exporter import _torch_compat, torchscript_adapter, versions
from deform_conv2d_onnx_exporter.lowering import LoweringOptions


@pytest.fixture(autouse=True)
def no_registration():
    """Every test starts and ends unregistered."""
    dce.unregister_deform_conv2d_onnx_op()
    yield
    dce.unregister_deform_conv2d_onnx_op()


def _legacy_export(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], **kwargs) -> bytes:
    buffer = io.BytesIO()
    if versions.installed().has_dynamo_keyword:
        kwargs["dynamo"] = False
    torch.onnx.export(module, inputs, buffer, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("version", "default", "keyword", "translation", "legacy_opsets"),
    [
        ("1.13.1", "legacy", False, False, (14, 17)),
        ("2.0.1+cpu", "legacy", False, False, (14, 18)),
        ("2.2.2", "legacy", False, False, (17, 19)),
        ("2.4.1", "legacy", True, False, (17, 20)),
        ("2.6.0", "legacy", True, True, (17, 20)),
        ("2.8.0+cu126", "legacy", True, True, (18, 20)),
        ("2.9.1", "dynamo", True, True, (20, 23)),
        ("2.14.1+cu130", "dynamo", True, True, (20, 23)),
        ("2.15.0.dev20261101", "dynamo", True, True, (20, 23)),
    ],
)
def test_version_detection(
    version: str, default: str, keyword: bool, translation: bool, legacy_opsets: tuple[int, int]
) -> None:
    caps = versions.capabilities(version)
    assert caps.default_exporter() == default
    assert caps.choose_exporter(None) == default
    assert caps.choose_exporter(False) == "legacy"
    assert caps.has_dynamo_keyword is keyword
    assert caps.has_dynamo_translation is translation
    assert caps.exporters() == (["legacy", "dynamo"] if translation else ["legacy"])
    assert caps.dynamo_default_opset == (20 if default == "dynamo" else 18)
    assert (caps.legacy_default_opset, caps.legacy_max_opset) == legacy_opsets
    assert caps.supported is (version != "1.13.1")
    assert caps.cpu_float16_matmul is (version not in ("1.13.1", "2.0.1+cpu"))
    assert caps.dynamo_keeps_size_one_dynamic is version.startswith(("2.14", "2.15"))
    assert caps.dynamo_symbolic_sizes is (default == "dynamo")
    if translation:
        assert caps.choose_exporter(True) == "dynamo"
    else:
        with pytest.raises(ValueError, match="dynamo: expected False on torch"):
            caps.choose_exporter(True)


@pytest.mark.parametrize(
    ("version", "has_deformconv"), [("1.15.1", False), ("1.24.4", False), ("1.25.0", True), ("1.32.0", True)]
)
def test_onnxruntime_version_detection(version: str, has_deformconv: bool) -> None:
    assert versions.onnxruntime_has_deformconv(version) is has_deformconv


class _Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_installed_torch_is_detected() -> None:
    """Every capability versions.installed() claims, checked against the installed torch itself."""
    caps = versions.installed()
    assert str(caps.version) == torch.__version__.split("+")[0]
    assert caps.supported
    parameters = inspect.signature(torch.onnx.export).parameters
    assert caps.has_dynamo_keyword == ("dynamo" in parameters)
    assert caps.has_dynamo_translation == ("custom_translation_table" in parameters)
    assert caps.dynamo_by_default == (
        parameters.get("dynamo") is not None and parameters["dynamo"].default is True
    )
    x = (torch.randn(2, 3),)
    default = onnx.load_from_string(_legacy_export(_Double(), x))
    assert default.opset_import[0].version == caps.legacy_default_opset
    highest = onnx.load_from_string(_legacy_export(_Double(), x, opset_version=caps.legacy_max_opset))
    assert highest.opset_import[0].version == caps.legacy_max_opset
    with pytest.raises(Exception, match=str(caps.legacy_max_opset + 1)):
        _legacy_export(_Double(), x, opset_version=caps.legacy_max_opset + 1)
    half = torch.ones(2, 2, dtype=torch.float16)
    if caps.cpu_float16_matmul:
        assert torch.mm(half, half).tolist() == [[2, 2], [2, 2]]
    else:
        with pytest.raises(RuntimeError, match="Half"):
            torch.mm(half, half)


@pytest.mark.dynamo
def test_installed_torch_dynamo_default_opset_and_size_one_dimensions() -> None:
    caps = versions.installed()
    program = torch.onnx.export(_Double(), (torch.randn(2, 3),), dynamo=True, verbose=False)
    opsets = {o.domain: o.version for o in program.model_proto.opset_import}
    assert opsets[""] == caps.dynamo_default_opset
    program = torch.onnx.export(
        _Double(),
        (torch.randn(1, 3),),
        dynamo=True,
        verbose=False,
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    batch = program.model_proto.graph.input[0].type.tensor_type.shape.dim[0]
    if caps.dynamo_keeps_size_one_dynamic:
        assert batch.dim_param == "batch", batch
    if not caps.dynamo_symbolic_sizes:
        assert batch.dim_value == 1, batch


def test_installed_onnxruntime_is_detected() -> None:
    """The native DeformConv runs on this ONNX Runtime exactly when versions says it does."""
    import onnxruntime
    from onnx import helper

    node = helper.make_node("DeformConv", ["x", "w", "offset"], ["y"], kernel_shape=[1, 1])
    tensors = {"x": [1, 1, 2, 2], "w": [1, 1, 1, 1], "offset": [1, 2, 2, 2], "y": [1, 1, 2, 2]}
    values = {
        name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
        for name, shape in tensors.items()
    }
    graph = helper.make_graph([node], "g", [values["x"], values["w"], values["offset"]], [values["y"]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=8)
    feeds = {
        "x": np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2),
        "w": np.ones((1, 1, 1, 1), np.float32),
        "offset": np.zeros((1, 2, 2, 2), np.float32),
    }
    if versions.onnxruntime_has_deformconv(onnxruntime.__version__):
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, feeds)[0], feeds["x"])
    else:
        with pytest.raises(Exception, match="DeformConv"):
            session = onnxruntime.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            session.run(None, feeds)


def test_export_dynamo_true_follows_the_installed_torch(tmp_path) -> None:
    """dynamo=True works where torch has custom_translation_table and is refused clearly elsewhere."""
    case = Case()
    path = tmp_path / "model.onnx"
    if versions.installed().has_dynamo_translation:
        dce.export(DeformConvCall(case), make_inputs(case), str(path), dynamo=True, verbose=False)
        assert path.exists()
    else:
        with pytest.raises(ValueError, match=r"dynamo: expected False on torch .*needs torch >= 2.6"):
            dce.export(DeformConvCall(case), make_inputs(case), str(path), dynamo=True)
        assert not path.exists()


def test_native_on_the_legacy_exporter_follows_the_installed_torch(tmp_path) -> None:
    """lowering="native" on the legacy exporter: opset 19 where torch writes it, a clear error elsewhere."""
    case = Case()
    path = tmp_path / "model.onnx"
    caps = versions.installed()
    if caps.legacy_max_opset >= 19:
        dce.export(
            DeformConvCall(case),
            make_inputs(case),
            str(path),
            dynamo=False,
            lowering="native",
            opset_version=19,
        )
        assert {node.op_type for node in onnx.load(str(path)).graph.node} == {"DeformConv"}
    else:
        message = rf"lowering: 'native' needs opset >= 19, and the legacy exporter of torch {caps.version}"
        with pytest.raises(dce.DeformConvExportError, match=message):
            dce.export(DeformConvCall(case), make_inputs(case), str(path), dynamo=False, lowering="native")
        with pytest.raises(dce.DeformConvExportError, match=message):
            dce.register_deform_conv2d_onnx_op(lowering="native")
        assert not path.exists()


def test_register_legacy_api_round_trip() -> None:
    case = Case(offset_groups=2)
    module, inputs, names = DeformConvCall(case), make_inputs(case), input_names(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dce.DeformConvWarning)
        dce.register_deform_conv2d_onnx_op()
        dce.register_deform_conv2d_onnx_op(use_gathernd=False)  # twice: the last one counts
    model = _legacy_export(module, inputs, opset_version=12, input_names=names)
    assert b"GatherElements" in model and b"GatherND" not in model
    assert_matches(run(model, names, inputs), module(*inputs), torch.float32)
    dce.unregister_deform_conv2d_onnx_op()
    dce.unregister_deform_conv2d_onnx_op()  # harmless
    # Unregistered, the legacy exporter cannot translate the op again. torch's own message
    # varies by release (after an unregister torch 2.14 says "min() arg is an empty sequence").
    with pytest.raises(Exception):  # noqa: B017
        _legacy_export(module, inputs, opset_version=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dce.DeformConvWarning)
        dce.register_deform_conv2d_onnx_op(lowering="gather_rows")  # and again after unregistering
    model = _legacy_export(module, inputs, opset_version=12, input_names=names)
    assert_matches(run(model, names, inputs), module(*inputs), torch.float32)


def _tutorial_export(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: str, **kwargs) -> None:
    """``torch.onnx.export`` as 1.x tutorials call it: no ``dynamo=`` (the default from torch 2.9)."""
    if versions.installed().has_dynamo_translation:
        kwargs.setdefault("verbose", False)
    torch.onnx.export(module, inputs, path, **kwargs)


@pytest.mark.parametrize("opset", [17, 20])
def test_old_tutorial_flow_writes_the_decomposition(tmp_path, opset: int) -> None:
    case = Case(offset_groups=2)
    module, inputs, names = DeformConvCall(case), make_inputs(case), input_names(case)
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dce.DeformConvWarning)
        dce.register_deform_conv2d_onnx_op()
        dce.register_deform_conv2d_onnx_op()  # twice: harmless
    assert [w for w in caught if issubclass(w.category, dce.DeformConvWarning)] == []
    _tutorial_export(module, inputs, path, opset_version=opset, input_names=names)
    model = onnx.load(path)
    assert "DeformConv" not in {node.op_type for node in model.graph.node}
    assert [e.version for e in model.opset_import if e.domain in ("", "ai.onnx")] == [opset]
    assert_matches(run(model.SerializeToString(), names, inputs), module(*inputs), torch.float32)


@pytest.mark.dynamo
def test_registration_reaches_an_explicit_dynamo_export(tmp_path) -> None:
    case = Case(mask=False)
    module, inputs, names = DeformConvCall(case), make_inputs(case), input_names(case)
    dce.register_deform_conv2d_onnx_op(lowering="gather_rows")
    program = torch.onnx.export(module, inputs, dynamo=True, verbose=False, input_names=names)
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert "Gather" in ops and "DeformConv" not in ops and "GridSample" not in ops
    assert_matches(
        run(program.model_proto.SerializeToString(), names, inputs), module(*inputs), torch.float32
    )
    # the translation cannot see the target opset: a lowering it cannot hold is refused, not written
    dce.register_deform_conv2d_onnx_op(lowering="native")
    with pytest.raises(dce.DeformConvExportError, match="lowering: 'native' needs opset >= 19, got opset 18"):
        torch.onnx.export(module, inputs, dynamo=True, verbose=False, opset_version=18)


@pytest.mark.dynamo
@pytest.mark.torch_writes_deformconv
def test_unregister_gives_the_dynamo_exporter_back_its_own_translation() -> None:
    case = Case()
    module, inputs = DeformConvCall(case), make_inputs(case)
    dce.register_deform_conv2d_onnx_op()
    dce.register_deform_conv2d_onnx_op()
    dce.unregister_deform_conv2d_onnx_op()
    program = torch.onnx.export(module, inputs, dynamo=True, verbose=False, opset_version=19)
    assert "DeformConv" in {node.op_type for node in program.model_proto.graph.node}


def test_register_warns_only_where_a_plain_export_would_still_be_wrong(monkeypatch) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dce.DeformConvWarning)
        dce.register_deform_conv2d_onnx_op()
    assert [w for w in caught if issubclass(w.category, dce.DeformConvWarning)] == []
    # A torch whose dynamo exporter this package cannot extend (newer than _torch_compat covers)
    monkeypatch.setattr(_torch_compat, "set_dynamo_default_translation", lambda *args: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dce.DeformConvWarning)
        dce.register_deform_conv2d_onnx_op()
    ours = [w for w in caught if issubclass(w.category, dce.DeformConvWarning)]
    if versions.installed().dynamo_by_default:
        assert len(ours) == 1 and "dynamo=False" in str(ours[0].message)
    else:
        assert ours == []


def test_export_restores_the_users_registration() -> None:
    torchscript_adapter.register(LoweringOptions("gatherelements"))
    case = Case()
    module, inputs = DeformConvCall(case), make_inputs(case)
    export(module, inputs, "legacy", "gathernd")
    assert torchscript_adapter.registered_options() == LoweringOptions("gatherelements")
    torchscript_adapter.register(None)
    export(module, inputs, "legacy")
    assert torchscript_adapter.registered_options() is None


@pytest.mark.dynamo
def test_custom_op_has_no_side_effects_and_works() -> None:
    op = dce.create_deform_conv2d_custom_op(use_gathernd=False)
    assert torchscript_adapter.registered_options() is None
    case = Case(mask=False)
    module, inputs, names = DeformConvCall(case), make_inputs(case), input_names(case)
    program = torch.onnx.export(
        module,
        inputs,
        dynamo=True,
        verbose=False,
        input_names=names,
        custom_translation_table={torch.ops.torchvision.deform_conv2d.default: op},
    )
    model = program.model_proto.SerializeToString()
    assert_matches(run(model, names, inputs), module(*inputs), torch.float32)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_leaves_the_model_alone(exporter: str) -> None:
    from deform_conv2d_onnx_exporter import demo

    model = demo.build_demo_model().train()
    model.stem[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    export(model, (torch.randn(1, 3, 16, 16),), exporter)
    assert model.training
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    assert grads.pop("stem.0.weight") is False and all(grads.values())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_legacy_opset_below_12_is_refused() -> None:
    case = Case()
    with pytest.raises(Exception, match=r"opset_version: .*needs opset >= 12.*got 11"):
        export(DeformConvCall(case), make_inputs(case), "legacy", opset=11)


def test_failed_export_leaves_no_file(tmp_path) -> None:
    case = Case()
    path = tmp_path / "model.onnx"
    with pytest.raises(Exception, match="opset"):
        dce.export(DeformConvCall(case), make_inputs(case), str(path), dynamo=False, opset_version=11)
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    ("use_gathernd", "lowering", "expected"),
    [
        (None, "auto", "auto"),
        (True, "auto", "gathernd"),
        (False, "auto", "gatherelements"),
        (None, "grid_sample", "grid_sample"),
        (True, "gathernd", "gathernd"),
        (None, "native", "native"),
    ],
)
def test_options_from_the_public_arguments(use_gathernd: bool | None, lowering: str, expected: str) -> None:
    assert LoweringOptions.from_api(use_gathernd, False, lowering).lowering == expected


@pytest.mark.parametrize(
    ("use_gathernd", "lowering", "message"),
    [
        (None, "fast", r"lowering: expected one of 'auto', 'grid_sample'.*got 'fast'"),
        (False, "gathernd", r"use_gathernd: False asks for 'gatherelements', which contradicts"),
        (True, "grid_sample", r"use_gathernd: True asks for 'gathernd', which contradicts"),
    ],
)
def test_contradictory_options_are_refused(use_gathernd: bool | None, lowering: str, message: str) -> None:
    with pytest.raises(dce.DeformConvExportError, match=message):
        dce.create_deform_conv2d_custom_op(use_gathernd, lowering=lowering)
    with pytest.raises(dce.DeformConvExportError, match=message):
        dce.register_deform_conv2d_onnx_op(use_gathernd, lowering=lowering)


def test_openvino_patch_is_accepted_and_changes_nothing() -> None:
    case = Case()
    module, inputs = DeformConvCall(case), make_inputs(case)
    plain, patched = io.BytesIO(), io.BytesIO()
    for target, patch in ((plain, False), (patched, True)):
        dce.export(module, inputs, target, dynamo=False, lowering="gathernd", enable_openvino_patch=patch)
    assert plain.getvalue() == patched.getvalue()


@pytest.mark.dynamo
def test_translation_table_may_not_translate_deform_conv2d() -> None:
    case = Case()
    table = {torch.ops.torchvision.deform_conv2d.default: dce.create_deform_conv2d_custom_op()}
    with pytest.raises(ValueError, match="custom_translation_table: expected no entry"):
        dce.export(
            DeformConvCall(case), make_inputs(case), io.BytesIO(), dynamo=True, custom_translation_table=table
        )


_WITHOUT_ONNXSCRIPT = """
import sys
sys.modules["onnxscript"] = None  # makes "import onnxscript" raise ImportError
import io, torch, torchvision
import deform_conv2d_onnx_exporter as dce

class Call(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 4, 3, 3))
    def forward(self, x, offset):
        return torchvision.ops.deform_conv2d(x, offset, self.weight, padding=1)

args = (torch.randn(1, 4, 6, 6), torch.randn(1, 18, 6, 6))
dce.export(Call(), args, io.BytesIO(), dynamo=False)
print("legacy ok")
try:
    dce.create_deform_conv2d_custom_op()
except dce.DeformConvExportError as error:
    print(error)
"""


def test_works_without_onnxscript_on_the_legacy_path() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ONNXSCRIPT], capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()[-2:]  # torch 2.0 prints a banner of its own before them
    assert lines[0] == "legacy ok"
    assert lines[1].startswith("onnxscript: the dynamo exporter path needs the package onnxscript")


class _Call(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None):
        return torchvision.ops.deform_conv2d(x, offset, self.weight, padding=1, mask=mask)


_BAD_CALLS = {
    "mask channels": (
        torch.randn(6, 4, 3, 3),
        (torch.randn(1, 4, 5, 5), torch.randn(1, 18, 5, 5), torch.rand(1, 8, 5, 5)),
        r"mask: expected 9 channels .*got mask.shape\[1\]=8",
    ),
    "integer input": (
        torch.randn(6, 4, 3, 3),
        (torch.randint(0, 5, (1, 4, 5, 5)), torch.randn(1, 18, 5, 5)),
        r"input: expected a floating-point tensor .*got int64",
    ),
    "weight inconsistent with the channels": (
        torch.randn(6, 3, 3, 3),
        (torch.randn(1, 4, 5, 5), torch.randn(1, 18, 5, 5)),
        r"input: expected in_channels = groups \* weight.shape\[1\] = 1 \* 3 = 3, got input.shape\[1\]=4",
    ),
    "offset groups not dividing the channels": (
        torch.randn(6, 4, 3, 3),
        (torch.randn(1, 4, 5, 5), torch.randn(1, 54, 5, 5)),
        r"offset_groups: in_channels=4 must be divisible by offset_groups=3",
    ),
}


@pytest.mark.dynamo
@pytest.mark.parametrize("name", list(_BAD_CALLS))
def test_bad_calls_get_our_error_on_the_dynamo_path(name: str, tmp_path) -> None:
    """torch.export does not run torchvision's checks; ours catch the call, on top of torch's wrappers."""
    weight, args, message = _BAD_CALLS[name]
    path = tmp_path / "model.onnx"
    with pytest.raises(dce.DeformConvExportError, match=message):
        dce.export(_Call(weight), args, str(path), dynamo=True, verbose=False)
    assert not path.exists()


@pytest.mark.parametrize("name", list(_BAD_CALLS))
def test_bad_calls_fail_on_the_legacy_path(name: str, tmp_path) -> None:
    """The legacy exporter runs torchvision's kernel while tracing, which refuses these first."""
    weight, args, _ = _BAD_CALLS[name]
    path = tmp_path / "model.onnx"
    # torchvision < 0.16 words its checks "Expected input_c.size(1) % n_offset_grps == 0 ..."
    with pytest.raises(RuntimeError, match=r"deform|shape\[1\]|not implemented for 'Long'|size\(1\)"):
        dce.export(_Call(weight), args, str(path), dynamo=False)
    assert not path.exists()

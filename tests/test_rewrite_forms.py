"""decompose_model, info and verify on mmcv's, mmdeploy's and OpenVINO's deformable convolutions:
what each attribute layout means, the opset and domain bookkeeping, chains of custom nodes. No torch.

The numbers of every form against torchvision are test_properties.py's; these tests pin the
decisions (README, "Already have an ONNX file").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_models import CUSTOM_FORMS, NodeCase, build, feeds, fits, in_form, run_model

from deform_conv2d_onnx_exporter import DeformConvExportError, decompose_model
from deform_conv2d_onnx_exporter.__main__ import main
from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

pytestmark = pytest.mark.onnx_only

DATA = Path(__file__).parent / "data"


def _case(form: str, **changes: object) -> NodeCase:
    mask, bias, (h, w) = fits(form, True, True, (1, 2))
    return NodeCase(mask=mask, bias=bias, pads=(h, w, h, w)).with_(**changes)


def _ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return run_model(model, inputs)[0]


def _set(model: onnx.ModelProto, name: str, value: object) -> onnx.ModelProto:
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
    return model


@pytest.mark.parametrize("form", CUSTOM_FORMS)
@pytest.mark.parametrize(("lowering", "opset"), [("auto", 12), ("grid_sample", 16), ("native", 19)])
def test_the_default_opset_is_raised_to_the_lowerings_and_custom_domains_go(
    form: str, lowering: str, opset: int
) -> None:
    """An mmcv model of opset 11 (mmcv's default) comes out at the lowest opset the lowering needs,
    importing no custom domain; native writes ONNX DeformConv."""
    case = _case(form)
    model = in_form(build(case), form, 11)
    out = decompose_model(model, lowering=lowering).model
    assert [(e.domain, e.version) for e in out.opset_import] == [("", opset)]
    assert ("DeformConv" in {n.op_type for n in out.graph.node}) == (lowering == "native")
    inputs = feeds(case)
    np.testing.assert_allclose(_ort(out, inputs), _ort(build(case), inputs), atol=1e-4, rtol=1e-4)


def test_an_explicit_opset_below_native_is_refused() -> None:
    model = in_form(build(_case("mmcv::MMCVModulatedDeformConv2d")), "mmcv::MMCVModulatedDeformConv2d", 11)
    with pytest.raises(DeformConvExportError, match="'native' needs opset >= 19, got opset 17"):
        decompose_model(model, opset=17, lowering="native")


def test_a_custom_domain_still_used_elsewhere_stays() -> None:
    form = "mmcv::MMCVDeformConv2d"
    model = in_form(build(_case(form)), form, 11)
    model.graph.node.append(helper.make_node("MMCVCornerPool", ["y"], ["z"], domain="mmcv", name="pool"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6, 7, 9]))
    out = decompose_model(model).model
    assert ("mmcv", 1) in [(e.domain, e.version) for e in out.opset_import]


@pytest.mark.parametrize(
    ("padding", "pads"),
    [([1, 1, 2, 2], (1, 2, 1, 2)), ([1, 2], (1, 2, 1, 2)), ([3, 3, 0, 0], (3, 0, 3, 0))],
    ids=["mmdeploy's (h, h, w, w)", "a pair", "no width padding"],
)
def test_mmdeploy_padding_means_what_the_source_model_meant(
    padding: list[int], pads: tuple[int, ...]
) -> None:
    """mmdeploy writes DCNv1's (h, w) padding as (h, h, w, w); its own kernels read the first two
    values as (h, w), which differs where h != w: the rewrite follows the source model."""
    form = "mmdeploy::MMCVDeformConv2d"
    case = _case(form, pads=pads)
    model = _set(in_form(build(case), form, 11), "padding", padding)
    inputs = feeds(case)
    np.testing.assert_allclose(
        _ort(decompose_model(model).model, inputs), _ort(build(case), inputs), atol=1e-4
    )


@pytest.mark.parametrize(
    ("form", "name", "value", "message"),
    [
        ("mmdeploy::MMCVDeformConv2d", "padding", [1, 2, 1, 2], r"padding: expected 2 values \(h, w\) or 4"),
        (
            "mmcv::MMCVDeformConv2d",
            "padding",
            [1, 1, 2, 2],
            r"padding: expected 2 values \(h, w\), got \[1, 1, 2, 2\]",
        ),
        ("org.openvinotoolkit::DeformableConv2D", "pads", [1, 1], r"pads: expected 4 values, \(h, h, w, w\)"),
        ("mmcv::MMCVDeformConv2d", "bias", 1, "bias: expected 0, got 1"),
        (
            "org.openvinotoolkit::DeformableConv2D",
            "group",
            2,
            "group and groups: expected one value, got {.group.: 2",
        ),
        ("DeformConv", "strides", 2, r"strides: expected 2 values \(h, w\), each >= 1, got \[2\]"),
    ],
)
def test_ambiguous_or_unsupported_attributes_are_refused(
    form: str, name: str, value: object, message: str
) -> None:
    case = _case(form, pads=(1, 1, 1, 1))
    model = _set(in_form(build(case), form, 11) if form != "DeformConv" else build(case), name, value)
    with pytest.raises(DeformConvExportError, match=f"{form} node 'dcn': {message}"):
        decompose_model(model)


@pytest.mark.parametrize(
    ("written", "pads"),
    [([1, 1, 2, 2], (1, 2, 1, 2)), ([2, 0, 1, 1], (2, 0, 1, 1)), ([2, 2, 2, 2], (2, 2, 2, 2))],
    ids=["mmdeploy's (h, h, w, w)", "ONNX's, asymmetric", "both"],
)
@pytest.mark.parametrize("lowering", ["auto", "native"])
def test_openvino_pads_follow_mmdeploy_where_it_could_have_written_them(
    written: list[int], pads: tuple[int, int, int, int], lowering: str
) -> None:
    """mmdeploy writes (h, h, w, w), which OpenVINO would read as ONNX pads: (a, a, b, b) is read as
    mmdeploy meant it, any other 4 values (mmdeploy never writes them) as ONNX pads."""
    form = "org.openvinotoolkit::DeformableConv2D"
    case = _case(form, pads=pads)
    # in_form pads symmetrically: the node of a symmetric case, the inputs and output of this one
    model = _set(in_form(build(case.with_(pads=(1, 1, 1, 1))), form, 11), "pads", written)
    for field in ("input", "output"):
        del getattr(model.graph, field)[:]
        getattr(model.graph, field).extend(getattr(build(case).graph, field))
    inputs = feeds(case)
    np.testing.assert_allclose(
        _ort(decompose_model(model).model, inputs), _ort(build(case), inputs), atol=1e-4
    )


def test_mmcv_writes_one_int_for_both_axes() -> None:
    """mmcv's symbolic passes what the user passed: ``stride=2`` is one INT attribute."""
    form = "mmcv::MMCVModulatedDeformConv2d"
    case = _case(form, strides=(2, 2), pads=(1, 1, 1, 1))
    model = _set(_set(in_form(build(case), form, 11), "stride", 2), "padding", 1)
    inputs = feeds(case)
    np.testing.assert_allclose(
        _ort(decompose_model(model).model, inputs), _ort(build(case), inputs), atol=1e-4
    )


def _chain(form: str) -> tuple[onnx.ModelProto, NodeCase]:
    """Two nodes of ``form``, the second reading the first's output (shape inference knows no
    custom operator: the second's input is stated from the first's inputs)."""
    case = _case(form, out_channels=4, symbolic_batch=True, symbolic_size=True, pads=(1, 1, 1, 1))
    model = in_form(build(case), form, 11)
    second = onnx.NodeProto()
    second.CopyFrom(model.graph.node[0])
    second.name, second.input[0], second.output[0] = "dcn2", "y", "y2"
    model.graph.node.append(second)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4, "OH", "OW"]))
    return model, case


@pytest.mark.parametrize("form", CUSTOM_FORMS)
def test_a_chain_of_custom_nodes(form: str) -> None:
    model, case = _chain(form)
    result = decompose_model(model, lowering="auto")
    assert result.rewritten == ["dcn", "dcn2"]
    native = decompose_model(model, lowering="native").model
    for batch, size in [(None, None), (2, (10, 5))]:
        inputs = feeds(case, batch=batch, size=size)
        np.testing.assert_allclose(_ort(result.model, inputs), _ort(native, inputs), atol=1e-4, rtol=1e-4)


def test_info_and_verify_read_a_custom_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    form = "mmdeploy::MMCVModulatedDeformConv2d"
    path = str(tmp_path / "mdcn.onnx")
    onnx.save(in_form(build(_case(form)), form, 11), path)
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert f"{form} 'dcn':" in out and "offset  offset: float (1, 18, 7, 11)" in out
    assert "decomposes as: stride=(1, 1) padding=(1, 2)" in out
    assert main(["verify", path, "--lowering", "gather_rows"]) == 0
    out = capsys.readouterr().out
    assert "with its nodes written as ONNX DeformConv" in out and "OK: worst error" in out


def test_weights_in_external_data_are_read_one_node_at_a_time(tmp_path: Path) -> None:
    """decompose reads a model's external data only as it rewrites each node, and writes the
    result's weights to a side file again."""
    form = "mmcv::MMCVModulatedDeformConv2d"
    case = _case(form, in_channels=16, out_channels=16)  # a weight above onnx.save's 1 KB threshold
    source, output = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(in_form(build(case), form, 11), source, save_as_external_data=True, size_threshold=0)
    assert main(["decompose", str(source), str(output)]) == 0
    assert (tmp_path / "out.onnx.data").stat().st_size > 0
    header = onnx.load(output, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in header.graph.initializer)
    inputs = feeds(case)
    np.testing.assert_allclose(_ort(onnx.load(output), inputs), _ort(build(case), inputs), atol=1e-4)


def test_missing_external_data_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.onnx"
    onnx.save(build(NodeCase()), source, save_as_external_data=True, size_threshold=0, location="w.bin")
    (tmp_path / "w.bin").unlink()
    assert main(["decompose", str(source), str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "w.bin is missing" in err, err
    assert not (tmp_path / "out.onnx").exists()


#: Models written by mmcv 2.2.0's and mmdeploy 1.3.1's own symbolic functions, with torchvision's
#: output beside each (tools/export_openmmlab.py).
EXPORTED = ["mmcv_dcn", "mmcv_mdcn", "mmdeploy_dcn", "mmdeploy_mdcn", "mmdeploy_openvino_dcn"]


@pytest.mark.parametrize("lowering", ["auto", *DECOMPOSITIONS, "native"])
@pytest.mark.parametrize("name", EXPORTED)
def test_models_exported_by_mmcv_and_mmdeploy(name: str, lowering: str) -> None:
    """Their DCNv1 pads (1, 2): mmdeploy writes it (1, 1, 2, 2), OpenVINO's form too."""
    model = onnx.load(DATA / f"{name}.onnx")
    arrays = dict(np.load(DATA / f"{name}.npz"))
    expected = arrays.pop("expected")
    result = decompose_model(model, lowering=lowering).model
    assert [e.domain for e in result.opset_import] == [""]
    np.testing.assert_allclose(_ort(result, arrays), expected, atol=1e-5, rtol=1e-5)


def test_in_place_rewrites_the_model_given() -> None:
    form = "mmdeploy::MMCVModulatedDeformConv2d"
    model = in_form(build(_case(form)), form, 11)
    result = decompose_model(model, in_place=True)
    assert result.model is model and result.rewritten == ["dcn"]
    assert not any(node.domain for node in model.graph.node)

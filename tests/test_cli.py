"""The command line: decompose, verify and info, their output, exit codes and errors. No torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime
import pytest
from onnx import helper
from onnx_models import NodeCase, build, onnxruntime_max_opset

from deform_conv2d_onnx_exporter.__main__ import PROGRESS_FROM, main
from deform_conv2d_onnx_exporter.verify import REFERENCE_EVALUATOR_MAX_SAMPLES
from deform_conv2d_onnx_exporter.versions import onnxruntime_has_deformconv

#: These tests rewrite ONNX models: their ``opset`` and ``lowering`` are not an exporter's.
pytestmark = pytest.mark.onnx_only

ERROR = "deform-conv2d-onnx: error: "


@pytest.fixture
def model_path(tmp_path: Path) -> str:
    path = str(tmp_path / "model.onnx")
    onnx.save(build(NodeCase(symbolic_batch=True, symbolic_size=True, group=2, offset_group=2)), path)
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(ERROR), err
    return err


def test_info_lists_nodes_and_parameters(model_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", model_path]) == 0
    out = capsys.readouterr().out
    assert "opset 19, 1 deformable convolution node(s)" in out
    assert "weight  W: float (6, 2, 3, 3)" in out
    assert "offset  offset: float (?, 36, ?, ?)" in out
    assert "group=2" in out and "offset_group=2" in out and "pads=[1, 1, 1, 1]" in out
    assert "decomposes as: stride=(1, 1) padding=(1, 1)" in out


def test_decompose_then_verify(model_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = str(tmp_path / "out.onnx")
    assert main(["decompose", model_path, out_path, "--opset", "16", "--lowering", "gather_rows"]) == 0
    assert "1 of 1 DeformConv nodes rewritten (lowering gather_rows, opset 16)" in capsys.readouterr().out
    assert not [n for n in onnx.load(out_path).graph.node if n.op_type == "DeformConv"]

    shapes = ["--shape", "N=2", "--shape", "H=5", "--shape", "W=6", "--shape", "OH=5", "--shape", "OW=6"]
    assert main(["verify", out_path, "--reference", model_path, *shapes]) == 0
    out = capsys.readouterr().out
    assert "input x: float32 (2, 4, 5, 6)" in out
    assert out.splitlines()[-1].startswith("OK: worst error")
    assert "onnx.reference" in out


def test_verify_decomposes_a_model_with_deformconv_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "static.onnx")
    onnx.save(build(NodeCase()), path)
    opset = ["--opset", str(onnxruntime_max_opset())] if onnxruntime_max_opset() < 19 else []
    assert main(["verify", path, "--lowering", "gathernd", *opset]) == 0
    out = capsys.readouterr().out
    assert "decomposed in memory (lowering gathernd)" in out and "OK: worst error" in out


def test_verify_asks_for_every_symbolic_size_at_once(
    model_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", model_path, "--shape", "H=5"]) == 1
    assert (
        "--shape: 4 symbolic dimension(s) have no size; give them with --shape N=N --shape W=N "
        "--shape OH=N --shape OW=N"
    ) in _one_error_line(capsys)


def test_verify_runs_the_reference_evaluator_on_small_models_or_on_request(
    model_path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deform_conv2d_onnx_exporter import verify

    shapes = ["--shape", "N=2", "--shape", "H=5", "--shape", "W=6", "--shape", "OH=5", "--shape", "OW=6"]
    if onnxruntime_max_opset() < 19:  # an ONNX Runtime that cannot run the model's opset 19
        shapes += ["--opset", str(onnxruntime_max_opset())]
    feeds = verify.random_inputs(onnx.load(model_path), {"N": 2, "H": 5, "W": 6, "OH": 5, "OW": 6})
    samples = verify.bilinear_samples(onnx.load(model_path), feeds)
    assert samples == 2 * 4 * 3 * 3 * 5 * 6  # B · C · kh · kw · oh · ow
    seconds = f"about {samples / verify.REFERENCE_EVALUATOR_SAMPLES_PER_SECOND:.0f} s"
    monkeypatch.setattr(verify, "REFERENCE_EVALUATOR_MAX_SAMPLES", samples - 1)
    assert main(["verify", model_path, *shapes]) == 0
    captured = capsys.readouterr()
    evaluator = f"onnx.reference {onnx.__version__} ({seconds})..."
    # an ONNX Runtime without DeformConv leaves the reference model to the reference evaluator
    reference = (
        []
        if onnxruntime_has_deformconv(onnxruntime.__version__)
        else [f"deform-conv2d-onnx: running the reference on {evaluator}"]
    )
    assert f"skipped: {samples} samples, {seconds}; --reference-evaluator runs it" in captured.out
    assert captured.err.splitlines() == reference
    assert main(["verify", model_path, *shapes, "--reference-evaluator"]) == 0
    captured = capsys.readouterr()
    assert "skipped" not in captured.out
    candidate = f"deform-conv2d-onnx: running {model_path} on {evaluator}"
    assert captured.err.splitlines() == [*reference, candidate]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import deform_conv2d_onnx_exporter

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"deform-conv2d-onnx {deform_conv2d_onnx_exporter.__version__}\n"


def test_verify_help_says_when_the_reference_evaluator_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"up to {REFERENCE_EVALUATOR_MAX_SAMPLES:,} bilinear samples" in text


def test_decompose_refuses_to_overwrite_its_input(
    model_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = Path(model_path).read_bytes()
    assert main(["decompose", model_path, model_path]) == 1
    assert "it would overwrite" in _one_error_line(capsys)
    assert Path(model_path).read_bytes() == before


def test_decompose_refuses_to_overwrite_the_inputs_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the input's weights are in out.onnx.data, where out.onnx with external data would put its own
    model_path, weights = tmp_path / "model.onnx", tmp_path / "out.onnx.data"
    onnx.save(
        build(NodeCase()),
        str(model_path),
        save_as_external_data=True,
        location=weights.name,
        size_threshold=0,
    )
    before = weights.read_bytes()
    assert main(["decompose", str(model_path), str(tmp_path / "out.onnx")]) == 1
    assert f"it would overwrite {weights}" in _one_error_line(capsys)
    assert weights.read_bytes() == before


def test_directories_are_named_as_such(
    model_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tmp_path)]) == 1
    assert f"cannot read {tmp_path}: is a directory" in _one_error_line(capsys)
    assert main(["decompose", model_path, str(tmp_path)]) == 1
    assert f"cannot write {tmp_path}: is a directory" in _one_error_line(capsys)


def _run_without(package: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing ``package`` fails, as if not installed."""
    prelude = f"import sys; sys.modules[{package!r}] = None; "
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=os.getcwd()
    )


@pytest.mark.parametrize(
    ("package", "argv", "extra"),
    [("torch", ["demo"], "torch"), ("onnxruntime", ["verify", "m.onnx"], "ort")],
)
def test_commands_name_the_extra_they_need(package: str, argv: list[str], extra: str) -> None:
    done = _run_without(
        package, f"from deform_conv2d_onnx_exporter.__main__ import main; sys.exit(main({argv!r}))"
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"{ERROR}{argv[0]} needs {package}, which is not installed: "
        f"pip install 'deform_conv2d_onnx_exporter[{extra}]'\n"
    )


def test_torch_entry_points_name_the_extra_without_torch() -> None:
    done = _run_without(
        "torch",
        "import deform_conv2d_onnx_exporter as dce\ntry:\n    dce.export\n"
        "except ModuleNotFoundError as error:\n    print(error)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "deform_conv2d_onnx_exporter.export needs torch, which is not installed: "
        "pip install 'deform_conv2d_onnx_exporter[torch]'\n"
    )


def test_verify_needs_a_reference_with_deformconv(
    model_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = str(tmp_path / "out.onnx")
    assert main(["decompose", model_path, out_path]) == 0
    capsys.readouterr()
    assert main(["verify", out_path]) == 1
    assert "--reference ORIGINAL.onnx" in _one_error_line(capsys)


def _unsupported_attribute(path: Path) -> None:
    model = build(NodeCase())
    model.graph.node[0].attribute.append(helper.make_attribute("auto_pad", "VALID"))
    onnx.save(model, str(path))


def _no_deformconv(path: Path) -> None:
    model = build(NodeCase())
    model.graph.node[0].op_type = "Conv"
    onnx.save(model, str(path))


@pytest.mark.parametrize("command", ["decompose", "info"])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "cannot read {path}: no such file"),
        (lambda p: p.write_bytes(b"\x00not an onnx file\xff" * 3), "cannot read {path} as an ONNX model"),
        (_no_deformconv, "has no deformable convolution node"),
        (_unsupported_attribute, "unsupported attribute auto_pad"),
    ],
    ids=["missing", "garbage", "no-deformconv", "unsupported-attribute"],
)
def test_errors_are_one_line_and_exit_1(
    command: str, make, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.onnx"
    if make is not None:
        make(path)
    if command == "info" and make is _unsupported_attribute:
        assert main(["info", str(path)]) == 0  # info reports it per node instead
        assert "cannot be decomposed: DeformConv node 'dcn': unsupported attribute auto_pad" in (
            capsys.readouterr().out
        )
        return
    argv = [command, str(path)] + ([str(tmp_path / "out.onnx")] if command == "decompose" else [])
    assert main(argv) == 1
    assert message.format(path=path) in _one_error_line(capsys)
    assert not (tmp_path / "out.onnx").exists()


def test_progress_for_many_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A chain of DeformConv nodes, each reading the previous one's output."""
    model = build(NodeCase(in_channels=6, out_channels=6))
    first = model.graph.node[0]
    for index in range(1, PROGRESS_FROM):
        node = onnx.NodeProto()
        node.CopyFrom(first)
        node.name, node.input[0], node.output[0] = f"dcn{index}", f"y{index - 1}", f"y{index}"
        model.graph.node.append(node)
    first.output[0] = "y0"
    model.graph.node[-1].output[0] = "y"
    path, out_path = str(tmp_path / "chain.onnx"), str(tmp_path / "out.onnx")
    onnx.save(model, path)
    assert main(["decompose", path, out_path]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"[{i + 1}/{PROGRESS_FROM}] rewrote {n.name!r}" for i, n in enumerate(model.graph.node)]


def test_module_entry_point_needs_no_torch(model_path: str, tmp_path: Path) -> None:
    code = (
        "import sys; from deform_conv2d_onnx_exporter.__main__ import main; "
        f"rc = main(['decompose', {model_path!r}, {str(tmp_path / 'o.onnx')!r}]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())


def test_console_script(model_path: str) -> None:
    # pip puts console scripts beside the interpreter of the environment it installs into.
    script = shutil.which("deform-conv2d-onnx", path=os.path.dirname(sys.executable))
    assert script is not None, f"no deform-conv2d-onnx beside {sys.executable}: pip install installs it"
    done = subprocess.run([script, "info", model_path], capture_output=True, text=True, check=True)
    assert "1 deformable convolution node(s)" in done.stdout

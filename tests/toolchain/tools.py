"""The deployment tools, each as: take an exported ONNX file, give its outputs for a list of inputs.

A tool either transforms the model and runs the result on ONNX Runtime (onnxsim, onnxslim, fp16
converters, quantizers, shape inference), or is a runtime of its own (OpenVINO, tract, ncnn, TVM, MNN,
LiteRT, onnxruntime-web; the edge compilers' runners are in edge_compilers.py). The versions are
pinned in noxfile.py (``TOOLCHAIN``), the one place they are written.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Optional

import numpy as np
import onnx
import onnxruntime
from edge_compilers import run_mnn, run_tvm
from models import INPUT, Variant, make_input

#: Runs one model: (ONNX file, variant, inputs, scratch folder) -> one output per input.
Runner = Callable[[str, Variant, list[np.ndarray], str], list[np.ndarray]]


@dataclass(frozen=True)
class Tool:
    """A tool and how its outputs are judged.

    ``kind``: "float32" (within 1e-4 of torchvision, relative to the output's largest value),
    "float16" (within 1e-2), "quantized" (within 1.5x the error of the same model with only its
    ordinary convolutions quantized), "report" (runs and gives finite outputs; its error is
    reported, not judged). ``fixed_shapes``: the tool fixes the input shape to the export size, so
    dynamic variants are checked at that size only. ``package``: whose version the table names.
    ``variants``: the variants it is tested on, when not all (a tool that takes a minute a model).
    ``large_size``: the tool computes in half precision (or may): dynamic variants are also
    checked at ``models.LARGE_SIZE``, where half precision's errors show. ``native``: the tool has
    a DeformConv of its own, and also takes the variants that hold ONNX DeformConv.
    """

    name: str
    run: Runner
    kind: str = "float32"
    fixed_shapes: bool = False
    package: str = "onnxruntime"
    variants: Optional[tuple[str, ...]] = None
    large_size: bool = False
    native: bool = False

    def takes(self, variant: Variant) -> bool:
        named = self.variants is None or variant.name in self.variants
        return named and (self.native or not variant.native)


def _session(
    model: str | bytes,
    level: Optional[onnxruntime.GraphOptimizationLevel] = None,
    saved: Optional[str] = None,
) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    if saved is not None:
        options.optimized_model_filepath = saved
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_onnxruntime(model: str | bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime's CPU provider at its default optimisation level."""
    session = _session(model)
    return [session.run(None, {INPUT: x})[0] for x in inputs]


def _on_onnxruntime(transform: Callable[[str, Variant, str], onnx.ModelProto | str]) -> Runner:
    """A tool that rewrites the model (into a ModelProto or a file), run on ONNX Runtime."""

    def run(path: str, variant: Variant, inputs: list[np.ndarray], folder: str) -> list[np.ndarray]:
        result = transform(path, variant, folder)
        if isinstance(result, onnx.ModelProto):
            result = result.SerializeToString()
        return run_onnxruntime(result, inputs)

    return run


def _export_shape(variant: Variant) -> tuple[int, ...]:
    return variant.sizes()[0]


def _onnxsim(path: str, variant: Variant, folder: str) -> onnx.ModelProto:
    import onnxsim

    simplified, checked = onnxsim.simplify(onnx.load(path))
    assert checked, "onnxsim: its own check of the simplified model failed"
    return simplified


def _onnxslim(path: str, variant: Variant, folder: str) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(onnx.load(path))


def _onnxslim_fixed(path: str, variant: Variant, folder: str) -> onnx.ModelProto:
    import onnxslim

    shape = ",".join(str(n) for n in _export_shape(variant))
    return onnxslim.slim(onnx.load(path), input_shapes=[f"{INPUT}:{shape}"])


def _onnxconverter_fp16(path: str, variant: Variant, folder: str) -> onnx.ModelProto:
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(onnx.load(path), keep_io_types=True)


def _ort_fp16(path: str, variant: Variant, folder: str) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load(path), keep_io_types=True)


def _symbolic_shape_inference(path: str, variant: Variant, folder: str) -> onnx.ModelProto:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(onnx.load(path), auto_merge=True)


def _quant_pre_process(path: str, variant: Variant, folder: str) -> str:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = os.path.join(folder, "preprocessed.onnx")
    # it writes its temporary files (sym_shape_infer_temp.onnx, a <uuid>.data) to the working folder
    with contextlib.chdir(folder):
        quant_pre_process(path, out)
    return out


def _quantize_dynamic(path: str, variant: Variant, folder: str) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = os.path.join(folder, "dynamic.onnx")
    quantize_dynamic(path, out, weight_type=QuantType.QInt8)
    return out


def quantize_static(path: str, variant: Variant, out: str, **options: object) -> str:
    """ORT's QDQ quantization of ``path`` into ``out``, calibrated on 4 random images of the export size."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat
    from onnxruntime.quantization import quantize_static as quantize

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{INPUT: make_input(_export_shape(variant), seed)} for seed in range(10, 14)])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self.feeds, None)

    quantize(path, out, Images(), quant_format=QuantFormat.QDQ, **options)  # type: ignore[arg-type]
    return out


def _quantize_static_default(path: str, variant: Variant, folder: str) -> str:
    return quantize_static(path, variant, os.path.join(folder, "qdq.onnx"))


def _quantize_static_excluding_sampling(path: str, variant: Variant, folder: str) -> str:
    from deform_conv2d_onnx_exporter import sampling_nodes

    excluded = sampling_nodes(onnx.load(path))
    return quantize_static(path, variant, os.path.join(folder, "qdq.onnx"), nodes_to_exclude=excluded)


def _saved_at(level: onnxruntime.GraphOptimizationLevel) -> Runner:
    """Optimised at ``level``, saved, and the saved model reloaded with no further optimisation."""

    def run(path: str, variant: Variant, inputs: list[np.ndarray], folder: str) -> list[np.ndarray]:
        saved = os.path.join(folder, "optimized.onnx")
        _session(path, level, saved)
        session = _session(saved, onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
        return [session.run(None, {INPUT: x})[0] for x in inputs]

    return run


def _openvino(precision: Optional[str]) -> Runner:
    def run(path: str, variant: Variant, inputs: list[np.ndarray], folder: str) -> list[np.ndarray]:
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        compiled = core.compile_model(core.read_model(path), "CPU", config)
        return [compiled({INPUT: x})[compiled.output(0)] for x in inputs]

    return run


def _tract(path: str, variant: Variant, inputs: list[np.ndarray], folder: str) -> list[np.ndarray]:
    import tract

    # symbolic sizes stay symbolic: one model runs every input size
    runnable = tract.onnx().load(path).into_model().into_runnable()
    return [runnable.run([x])[0].to_numpy() for x in inputs]


def _ncnn(path: str, variant: Variant, inputs: list[np.ndarray], folder: str) -> list[np.ndarray]:
    """pnnx converts the ONNX file at the export size to ncnn, which runs it.

    pnnx 20261020 given a second input shape (``inputshape2``, for dynamic sizes) aborts in its
    ncnn pass on every variant (``std::invalid_argument: stoi``). ncnn has no batch dimension:
    each image of a batch is one run.
    """
    import ncnn

    model = os.path.join(folder, "model.onnx")
    shutil.copy(path, model)
    shapes = [
        f"inputshape{'' if i == 0 else i + 1}=[{','.join(map(str, x.shape))}]f32"
        for i, x in enumerate(inputs)
    ]
    # fp16=0: pnnx otherwise stores the weights in float16 (an error of 2.5e-4 on a plain Conv)
    command = [os.path.join(os.path.dirname(sys.executable), "pnnx"), model, *shapes, "fp16=0"]
    converted = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    param, weights = (os.path.join(folder, f"model.ncnn.{ext}") for ext in ("param", "bin"))
    if converted.returncode != 0 or not os.path.exists(param):
        raise RuntimeError(f"pnnx exited with {converted.returncode}: {_last_lines(converted)}")
    outputs = []
    for x in inputs:
        images = []
        for image in x:
            net = ncnn.Net()
            net.load_param(param)
            net.load_model(weights)
            extractor = net.create_extractor()
            extractor.input("in0", ncnn.Mat(np.ascontiguousarray(image)))
            status, out = extractor.extract("out0")
            if status != 0:
                raise RuntimeError(
                    f"ncnn: extract returned {status}; layers pnnx left without an ncnn "
                    f"equivalent: {', '.join(_foreign_layers(param)) or 'none'}"
                )
            images.append(np.array(out))
        outputs.append(np.stack(images))
    return outputs


def _foreign_layers(param: str) -> list[str]:
    """The layer types of an ncnn .param file that ncnn lacks (pnnx's ``torch.*``, ``Tensor.*``, ...)."""
    with open(param) as file:
        types = [line.split()[0] for line in file.readlines()[2:] if line.strip()]
    return sorted({kind for kind in types if "." in kind})


def _last_lines(process: subprocess.CompletedProcess[str], count: int = 3) -> str:
    lines = (process.stdout + process.stderr).strip().splitlines()
    return " | ".join(lines[-count:])


# Tools that start a heavy program (a browser, onnx2tf) run every model in one go: the first test
# of the tool computes all results, the others read them.
Job = tuple[str, int]  # (variant name, index of the input)
BatchJob = tuple[Variant, str, list[np.ndarray]]  # (variant, ONNX file, inputs)
BatchRunner = Callable[[list[BatchJob], str], dict[Job, np.ndarray | str]]


def _serve(folder: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A static file server for ``folder`` on 127.0.0.1 (a free port), running in a thread."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {
            **http.server.SimpleHTTPRequestHandler.extensions_map,
            ".wasm": "application/wasm",
            ".mjs": "text/javascript",
        }

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=folder, **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


HERE = os.path.dirname(os.path.abspath(__file__))


#: Where onnxruntime placed a model's nodes: execution provider -> {"count": how many, "nodes":
#: ["OpType (node name)", ...]} (onnxruntime names none when one provider has them all).
Placement = dict[str, dict[str, Any]]


@dataclass
class WebRun:
    """What one Chromium run of onnxruntime-web gave.

    ``outputs``: (variant, input index) -> output, or the error message. ``placements``: variant
    -> where onnxruntime placed its nodes (verbose runs only), read from onnxruntime's own log.
    ``peak_kb``: the peak resident memory of Chromium's processes over the run, by process type.
    """

    outputs: dict[Job, np.ndarray | str]
    placements: dict[str, Placement]
    peak_kb: dict[str, int]


def run_ort_web(jobs: list[BatchJob], folder: str) -> dict[Job, np.ndarray | str]:
    """Every model on onnxruntime-web's wasm backend in one headless Chromium."""
    return ort_web(jobs, folder, "wasm").outputs


def ort_web(
    jobs: list[BatchJob], folder: str, backend: str, verbose: bool = False, summary: bool = False
) -> WebRun:
    """Every model on onnxruntime-web in one headless Chromium, served from 127.0.0.1.

    ``backend``: "wasm" (its wasm-only bundle) or "webgpu" (the WebGPU bundle, on Chromium's
    software adapter); ``verbose``: read where onnxruntime placed each model's nodes; ``summary``:
    each output is (mean, max |x|) only, so that the page's memory is the model's, not the copy of
    a large output it hands back.
    """
    modules = os.environ["DCE_NODE_MODULES"]
    os.symlink(os.path.join(modules, "onnxruntime-web", "dist"), os.path.join(folder, "ort"))
    shutil.copy(os.path.join(HERE, "ort_web.html"), os.path.join(folder, "index.html"))
    listing = []
    for variant, path, inputs in jobs:
        shutil.copy(path, os.path.join(folder, f"{variant.name}.onnx"))
        for index, x in enumerate(inputs):
            x.tofile(os.path.join(folder, f"{variant.name}.{index}.bin"))
            listing.append(
                {
                    "id": f"{variant.name}.{index}",
                    "model": f"{variant.name}.onnx",
                    "input": f"{variant.name}.{index}.bin",
                    "shape": list(x.shape),
                    "backend": backend,
                    "verbose": verbose and index == 0,  # the placement is the same for every input
                    "summary": summary,
                }
            )
    with open(os.path.join(folder, "jobs.json"), "w") as file:
        json.dump(listing, file)
    server, url = _serve(folder)
    bundle = "ort.webgpu.min.js" if backend == "webgpu" else "ort.wasm.min.js"
    try:
        results_path = os.path.join(folder, "results.json")
        driven = subprocess.run(
            [
                "node",
                os.path.join(HERE, "ort_web.mjs"),
                f"{url}/index.html?bundle={bundle}",
                os.path.join(folder, "jobs.json"),
                results_path,
                os.path.join(folder, "chromium-profile"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "NODE_PATH": modules},
            timeout=1800,
        )
    finally:
        server.shutdown()
    if driven.returncode != 0:
        raise RuntimeError(f"ort_web.mjs exited with {driven.returncode}: {_last_lines(driven)}")
    with open(results_path) as file:
        results = json.load(file)
    found: dict[Job, np.ndarray | str] = {}
    placements: dict[str, Placement] = {}
    for key, value in results.items():
        if key == "peak_kb":  # not a job
            continue
        name, index = _job(key)
        if "placement" in value:
            placements[name] = value["placement"]
        if "error" in value:
            found[name, index] = value["error"]
        else:
            found[name, index] = np.asarray(value["data"], np.float32).reshape(value["dims"])
    return WebRun(found, placements, results["peak_kb"])


def _job(key: str) -> Job:
    name, index = key.rsplit(".", 1)
    return name, int(index)


def run_onnx2tf(jobs: list[BatchJob], folder: str) -> dict[Job, np.ndarray | str]:
    """Every model through onnx2tf to a .tflite file, run in LiteRT's interpreter, in onnx2tf's own venv.

    One process per model: the interpreter can crash the process on a model converted wrongly (a
    segmentation fault, seen on a part of a model onnx2tf sliced along the wrong axis). The input
    shape is fixed at conversion: dynamic variants are converted at their export size.
    """
    results: dict[Job, np.ndarray | str] = {}
    for variant, path, inputs in jobs:
        data = []
        for index, x in enumerate(inputs):
            data.append(os.path.join(folder, f"{variant.name}.{index}.npy"))
            np.save(data[-1], x)
        # onnx2tf overwrites the file it converts with its own simplification: give it a copy
        model = os.path.join(folder, f"{variant.name}.onnx")
        shutil.copy(path, model)
        listing = os.path.join(folder, f"{variant.name}.json")
        with open(listing, "w") as file:
            json.dump(
                [
                    {
                        "name": variant.name,
                        "model": model,
                        "inputs": data,
                        "shape": list(_export_shape(variant)),
                    }
                ],
                file,
            )
        command = [os.environ["DCE_ONNX2TF_PYTHON"], os.path.join(HERE, "onnx2tf_run.py"), listing]
        driven = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
        if driven.returncode != 0:
            results.update(
                {
                    (variant.name, index): f"onnx2tf_run.py exited with {driven.returncode}: "
                    f"{_last_lines(driven, 1)}"
                    for index in range(len(inputs))
                }
            )
            continue
        with open(listing + ".results") as file:
            found = json.load(file)
        printed = driven.stdout + driven.stderr
        results.update(
            {
                _job(key): _onnx2tf_reason(value, printed)
                if isinstance(value, str)
                else np.load(value["npy"])
                for key, value in found.items()
            }
        )
    return results


def _onnx2tf_reason(message: str, printed: str) -> str:
    """A failed conversion on one line: the node and the cause, from the error and what onnx2tf printed.

    onnx2tf often prints a traceback and exits. The node is the last ``onnx_op_name:`` or TF layer
    ``name='...'``; the cause the last line after "Exception encountered when calling ...", or else
    the last error line that is not a wrapper ("in user code:").
    """
    if not message.startswith("onnx2tf"):
        return message.splitlines()[0]
    text = message + "\n" + printed
    nodes = re.findall(r"(?:onnx_op_name: |name=')([^'\s]+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [
        line
        for before, line in zip([""] + lines, lines)
        if "Exception encountered when calling" in before
        or re.search(r"\b\w+(Error|Exception): (?!in user code:|Exception encountered)", line)
    ]
    return (
        f"onnx2tf at node {nodes[-1] if nodes else '?'}: "
        f"{causes[-1][:300] if causes else 'exited without saying why'}"
    )


@dataclass(frozen=True)
class BatchTool(Tool):
    """A tool whose runs are done all at once by ``batch``."""

    batch: Optional[BatchRunner] = None


def _unused(path: str, variant: Variant, inputs: list[np.ndarray], folder: str) -> list[np.ndarray]:
    raise AssertionError("a batch tool runs through its batch runner")


LEVELS = onnxruntime.GraphOptimizationLevel
TOOLS: list[Tool] = [
    Tool("onnxsim", _on_onnxruntime(_onnxsim), package="onnxsim"),
    Tool("onnxslim", _on_onnxruntime(_onnxslim), package="onnxslim"),
    Tool("onnxslim-fixed-shapes", _on_onnxruntime(_onnxslim_fixed), fixed_shapes=True, package="onnxslim"),
    Tool(
        "fp16-onnxconverter-common",
        _on_onnxruntime(_onnxconverter_fp16),
        kind="float16",
        package="onnxconverter-common",
        large_size=True,
    ),
    Tool("fp16-ort-transformers", _on_onnxruntime(_ort_fp16), kind="float16", large_size=True),
    Tool("ort-symbolic-shape-inference", _on_onnxruntime(_symbolic_shape_inference)),
    Tool("ort-quant-pre-process", _on_onnxruntime(_quant_pre_process)),
    Tool("ort-quantize-dynamic", _on_onnxruntime(_quantize_dynamic), kind="report"),
    Tool("ort-quantize-static-qdq", _on_onnxruntime(_quantize_static_default), kind="report"),
    Tool(
        "ort-quantize-static-qdq-excluding-sampling",
        _on_onnxruntime(_quantize_static_excluding_sampling),
        kind="quantized",
    ),
    Tool("ort-basic-saved", _saved_at(LEVELS.ORT_ENABLE_BASIC)),
    Tool("ort-extended-saved", _saved_at(LEVELS.ORT_ENABLE_EXTENDED)),
    Tool("ort-layout-saved", _saved_at(LEVELS.ORT_ENABLE_LAYOUT)),
    Tool("ort-all-saved", _saved_at(LEVELS.ORT_ENABLE_ALL)),
    Tool("openvino-f32", _openvino("f32"), package="openvino", large_size=True),
    Tool("openvino-default-precision", _openvino(None), kind="report", package="openvino", large_size=True),
    Tool("tract", _tract, package="tract"),
    Tool("pnnx-ncnn", _ncnn, fixed_shapes=True, package="pnnx"),
    Tool("tvm-relax-llvm", run_tvm, package="apache-tvm"),
    Tool("mnn", run_mnn, package="mnn"),
    BatchTool(
        "onnx2tf-tflite", _unused, fixed_shapes=True, package="onnx2tf", batch=run_onnx2tf, native=True
    ),
    BatchTool("onnxruntime-web-wasm-chromium", _unused, package="onnxruntime-web", batch=run_ort_web),
]


def version(tool: Tool) -> str:
    """The tested version of the tool's package, from the environment that runs it."""
    if tool.package == "onnxruntime-web":
        with open(os.path.join(os.environ["DCE_NODE_MODULES"], "onnxruntime-web", "package.json")) as file:
            return str(json.load(file)["version"])
    if tool.package == "onnx2tf":
        found = subprocess.run(
            [
                os.environ["DCE_ONNX2TF_PYTHON"],
                "-c",
                "from importlib import metadata; print(metadata.version('onnx2tf'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return found.stdout.strip()
    return metadata.version(tool.package)

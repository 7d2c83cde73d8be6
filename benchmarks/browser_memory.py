"""Peak memory in the browser and on ONNX Runtime's CPU provider, for whole models with several DCNs.

The two models of bench_models.py (the demo backbone: three DCNv2 stages; the decoder: three
DCNv2 over a feature pyramid), batch 1, at square inputs from 1/4 to 1/1 of 1024² by side, exported
by the legacy exporter at opset 19 with static sizes (native needs opset 19):

- ONNX Runtime CPU (1.x, the Python package): the peak resident memory (VmHWM) of a fresh process
  that loads and runs the model, for native DeformConv and every lowering;
- onnxruntime-web in headless Chromium, the default lowering on the wasm and the WebGPU backends
  (one fresh browser per model): the peak resident memory of the renderer (the page and
  onnxruntime's wasm heap, which wasm32 caps at 4 GiB) and of the GPU process (WebGPU's buffers:
  the adapter is SwiftShader, so they live in that process's memory), each minus the same
  browser's peak for a page that runs a 1x1 convolution on an 8x8 image: what the model, its input
  and its output add to onnxruntime-web's own.

Every output is checked against torchvision first. Needs the toolchain's node modules
(onnxruntime-web, puppeteer-core) and Debian's chromium, as the toolchain session installs them:

    DCE_NODE_MODULES=.../toolchain-tools/node/node_modules python benchmarks/browser_memory.py
    ... browser_memory.py --models decoder --sizes 256 512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "toolchain"))
from bench import DEFAULT, peak_memory_mb  # noqa: E402 - sibling files, not a package
from bench_models import Case, build, export_model  # noqa: E402

#: Outputs of whole models are sums of many products (bench_models.py's bound).
TOLERANCE = 1e-3
#: Chromium's processes whose peaks are reported, and their column names.
PROCESSES = {"renderer": "renderer", "gpu-process": "GPU process"}


def browser_peaks(
    path: str, x: np.ndarray, expected: np.ndarray, backend: str, folder: str
) -> dict[str, float]:
    """MB of peak resident memory per Chromium process while onnxruntime-web runs ``path`` once."""
    from models import Variant

    from tools import ort_web

    variant = Variant("model", "legacy")
    run = ort_web([(variant, path, [x])], tempfile.mkdtemp(dir=folder), backend, summary=True)
    got = run.outputs["model", 0]
    if isinstance(got, str):
        raise RuntimeError(f"{backend}: {got}")
    # the page hands back the output's mean and largest magnitude, not the output
    scale = float(np.abs(expected).max())
    error = max(abs(got[0] - expected.mean()), abs(got[1] - scale)) / scale
    if error > TOLERANCE:
        raise RuntimeError(f"{backend}: mean or max |x| off by {error:.1e} (relative), above {TOLERANCE}")
    return {name: run.peak_kb.get(process, 0) / 1024 for process, name in PROCESSES.items()}


#: The input of the baseline model: a page that ran next to nothing.
BASELINE_SHAPE = (1, 3, 8, 8)


def baseline_model(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Writes a 1x1 convolution of an 8x8 image; its input and output. A browser that runs it holds
    onnxruntime-web's code and heap and nothing of a model's size: the peaks are measured above it."""
    import torch

    conv = torch.nn.Conv2d(3, 8, 1)
    x = np.random.default_rng(1).standard_normal(BASELINE_SHAPE).astype(np.float32)
    torch.onnx.export(conv, (torch.from_numpy(x),), path, dynamo=False, input_names=["image"])
    with torch.no_grad():
        return x, conv(torch.from_numpy(x)).numpy()


def main() -> int:
    from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=["backbone", "decoder"])
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 768, 1024])
    parser.add_argument("--browser", nargs="*", default=["wasm", "webgpu"], help="backends (none: CPU only)")
    parser.add_argument("--skip-cpu", action="store_true", help="only the browser columns")
    args = parser.parse_args()
    import torch

    print(
        "peak resident memory, MB; browser columns: minus the same browser running a 1x1 conv on an 8x8 image"
    )
    lowerings = [] if args.skip_cpu else ["native", *DECOMPOSITIONS]
    header = ["model", "size", *(f"CPU {name}" for name in lowerings)]
    header += [f"{backend} {name}" for backend in args.browser for name in PROCESSES.values()]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for model_name in args.models:
        for size in args.sizes:
            case = Case(model_name, 1, size)
            model = build(case)
            x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
            with torch.no_grad():
                expected = model(torch.from_numpy(x)).numpy()  # type: ignore[operator]
            with tempfile.TemporaryDirectory() as folder:
                feed = os.path.join(folder, "feed.npz")
                np.savez(feed, image=x)
                cells = []
                for lowering in lowerings:
                    path = os.path.join(folder, f"{lowering}.onnx")
                    export_model(model, x, lowering, path)
                    cells.append(f"{peak_memory_mb(path, feed):.0f}")
                default = os.path.join(folder, f"{DEFAULT}.onnx")
                if not os.path.exists(default):
                    export_model(model, x, DEFAULT, default)
                baseline = os.path.join(folder, "baseline.onnx")
                baseline_input, baseline_expected = baseline_model(baseline)
                for backend in args.browser:
                    try:
                        base = browser_peaks(baseline, baseline_input, baseline_expected, backend, folder)
                        peaks = browser_peaks(default, x, expected, backend, folder)
                        cells += [f"{peaks[name] - base[name]:.0f}" for name in PROCESSES.values()]
                    except RuntimeError as error:
                        cells += [f"fails: {str(error)[:80]}"] + [""] * (len(PROCESSES) - 1)
            print(f"| {model_name} | {size}² | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

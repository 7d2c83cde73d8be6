"""transformers.js (``@huggingface/transformers``, pinned in noxfile.py) as a client of an exported model.

The network of the other toolchain tests, exported into a model folder as transformers.js reads it
(docs/deploying.md, "transformers.js", is the recipe: config.json, preprocessor_config.json,
onnx/model.onnx and onnx/model_fp16.onnx), is loaded by the library itself, its image processor and
its model class, in Node (onnxruntime-node, CPU) and in headless Chromium (onnxruntime-web: wasm, and
WebGPU on the software adapter, float32 only: that adapter has no shader-f16, and transformers.js
refuses fp16 on WebGPU without it). Test ids are ``<dtype>-<runtime>-<device>``. Each run takes two images,
at the export size and at another (the folder's model has symbolic height and width); the processor's
pixel values must be the ones computed here, and the model's output must match torchvision's on them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from models import EXPORT_SIZE, OTHER_SIZE, reference, relative_error
from onnxruntime.transformers.float16 import convert_float_to_float16
from test_toolchain import TOLERANCE
from torch import nn

import deform_conv2d_onnx_exporter as dce
from tools import HERE, _last_lines, _serve

#: The folder's name under the local model path, and the model's input and output. transformers.js's
#: image processors return ``pixel_values``, and its models feed each input by the name the ONNX
#: file gives it.
MODEL = "dcn-demo"
INPUT = "pixel_values"
OUTPUT = "features"
#: ImageNet's, as most image models' preprocessor_config.json have them.
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
#: transformers.js's dtype (it reads onnx/model.onnx for fp32, onnx/model_fp16.onnx for fp16) -> the
#: tolerance's kind.
KIND = {"fp32": "float32", "fp16": "float16"}
#: (dtype, runtime, device): in Node transformers.js runs onnxruntime-node, in Chromium onnxruntime-web.
RUNS = [
    ("fp32", "node", "cpu"),
    ("fp16", "node", "cpu"),
    ("fp32", "chromium", "wasm"),
    ("fp16", "chromium", "wasm"),
    ("fp32", "chromium", "webgpu"),
]


def write_model_folder(model: nn.Module, folder: str) -> None:
    """The model folder transformers.js loads: the recipe of docs/deploying.md."""
    os.makedirs(os.path.join(folder, "onnx"))
    fp32 = os.path.join(folder, "onnx", "model.onnx")
    height = torch.export.Dim("height", min=8, max=2048)
    width = torch.export.Dim("width", min=8, max=2048)
    dce.export(
        model,
        (torch.randn(1, 3, *EXPORT_SIZE),),
        fp32,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({2: height, 3: width},),
        verbose=False,
        external_data=False,  # one file: transformers.js looks for external data only when told to
    )
    # float32 inputs and outputs: transformers.js feeds the processor's float32 pixel values as they are
    fp16 = convert_float_to_float16(onnx.load(fp32), keep_io_types=True)
    onnx.save(fp16, os.path.join(folder, "onnx", "model_fp16.onnx"))
    config = {"model_type": MODEL, "transformers.js_config": {"dtype": "fp32"}}
    preprocessor = {
        "do_resize": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": MEAN,
        "image_std": STD,
    }
    for name, content in (("config.json", config), ("preprocessor_config.json", preprocessor)):
        with open(os.path.join(folder, name), "w") as file:
            json.dump(content, file, indent=2)


def pixel_values(image: np.ndarray) -> np.ndarray:
    """What the folder's image processor makes of an (H, W, 3) uint8 image: (1, 3, H, W) float32."""
    scaled = (image / 255 - np.array(MEAN)) / np.array(STD)
    return scaled.transpose(2, 0, 1)[np.newaxis].astype(np.float32)


@pytest.fixture(scope="module")
def models_dir(network: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The local model path: a folder holding the model folder ``MODEL``."""
    root = str(tmp_path_factory.mktemp("models"))
    write_model_folder(network, os.path.join(root, MODEL))
    return root


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in (EXPORT_SIZE, OTHER_SIZE)]


def _onnxruntime_web_dist(modules: str) -> str:
    """The dist folder of the onnxruntime-web release transformers.js's browser bundle was built
    with: its wasm files must match the JavaScript inside the bundle. npm nests it under
    transformers.js when another onnxruntime-web (the toolchain's own pin) takes the top level."""
    package = os.path.join(modules, "@huggingface", "transformers")
    with open(os.path.join(package, "package.json")) as file:
        wanted = json.load(file)["dependencies"]["onnxruntime-web"]
    found = []
    for candidate in (os.path.join(package, "node_modules"), modules):
        path = os.path.join(candidate, "onnxruntime-web")
        if os.path.exists(os.path.join(path, "package.json")):
            with open(os.path.join(path, "package.json")) as file:
                version = json.load(file)["version"]
            if version == wanted:
                return os.path.join(path, "dist")
            found.append(version)
    raise FileNotFoundError(f"transformers.js needs onnxruntime-web {wanted}; {modules} holds {found}")


def _site(models_dir: str, modules: str, folder: str) -> str:
    """The folder the Chromium page is served from (transformers_js.html names what it holds)."""
    site = os.path.join(folder, "site")
    os.makedirs(site)
    bundle = os.path.join(modules, "@huggingface", "transformers", "dist")
    os.symlink(bundle, os.path.join(site, "transformers"))
    os.symlink(_onnxruntime_web_dist(modules), os.path.join(site, "ort"))
    os.symlink(models_dir, os.path.join(site, "models"))
    shutil.copy(os.path.join(HERE, "transformers_js.html"), os.path.join(site, "index.html"))
    shutil.copy(os.path.join(HERE, "transformers_js_run.mjs"), site)
    return site


def run_transformers_js(
    models_dir: str, dtype: str, runtime: str, device: str, images: list[np.ndarray], folder: str
) -> dict[str, Any]:
    """The driver's results for ``images`` (transformers_js.mjs: {results} or {error}, and {outside})."""
    modules = os.environ["DCE_NODE_MODULES"]
    job: dict[str, Any] = {"model": MODEL, "dtype": dtype, "device": device, "output": OUTPUT, "images": []}
    for index, image in enumerate(images):
        path = os.path.join(folder, f"image{index}.bin")
        image.tofile(path)
        job["images"].append({"file": path, "height": image.shape[0], "width": image.shape[1]})
    job_path, results_path = os.path.join(folder, "job.json"), os.path.join(folder, "results.json")
    with open(job_path, "w") as file:
        json.dump(job, file)
    command = ["node", os.path.join(HERE, "transformers_js.mjs"), runtime]
    server = None
    if runtime == "node":
        command += [models_dir, job_path, results_path]
    else:
        server, url = _serve(_site(models_dir, modules, folder))
        command += [url, job_path, results_path, os.path.join(folder, "chromium-profile")]
    try:
        environment = {**os.environ, "NODE_PATH": modules}
        driven = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    finally:
        if server is not None:
            server.shutdown()
    if driven.returncode != 0:
        raise RuntimeError(f"transformers_js.mjs exited with {driven.returncode}: {_last_lines(driven)}")
    with open(results_path) as file:
        return dict(json.load(file))


def _array(tensor: dict[str, Any]) -> np.ndarray:
    """A tensor as the driver writes it ({type, dims, data}) as float32."""
    return np.asarray(tensor["data"], np.float32).reshape(tensor["dims"])


@pytest.mark.parametrize(("dtype", "runtime", "device"), RUNS, ids=[f"{d}-{r}-{e}" for d, r, e in RUNS])
def test_transformers_js(
    dtype: str,
    runtime: str,
    device: str,
    network: nn.Module,
    models_dir: str,
    images: list[np.ndarray],
    tmp_path: str,
) -> None:
    found = run_transformers_js(models_dir, dtype, runtime, device, images, str(tmp_path))
    assert "error" not in found, f"transformers.js: {found['error']}"
    assert not found.get("outside"), f"the page fetched from outside the test's server: {found['outside']}"
    errors = []
    for image, result in zip(images, found["results"], strict=True):
        expected_input = pixel_values(image)
        np.testing.assert_allclose(_array(result["pixel_values"]), expected_input, rtol=0, atol=1e-6)
        # keep_io_types: the fp16 file, too, gives float32
        assert result["output"]["type"] == "float32"
        errors.append(relative_error(_array(result["output"]), reference(network, expected_input)))
    print(f"{dtype} {runtime} {device}: relative errors {' / '.join(f'{e:.1e}' for e in errors)}")
    assert max(errors) <= TOLERANCE[KIND[dtype]], errors

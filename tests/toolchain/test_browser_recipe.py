"""README's browser recipe, as a reader follows it: its export, then its page in headless Chromium.

The README's "Browser" subsection holds a python block (export, float16 copy) and an html block (the
page). This test runs the python block in a new folder, serves the page from there with
onnxruntime-web from the toolchain's node modules instead of the CDN, and opens it twice: in a
Chromium with WebGPU (the page must choose it) and in one with no GPU (the page must fall back to
wasm). Each time the page's printed statistics of the output must match torchvision's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deform_conv2d_onnx_exporter.demo import build_demo_model
from tools import HERE, _serve

README = Path(HERE).parents[1] / "README.md"
#: Where the page loads onnxruntime-web from; the test serves the same files from the page's folder.
CDN = re.compile(r"https://cdn\.jsdelivr\.net/npm/onnxruntime-web@[\d.]+/dist/")
TOLERANCE = 1e-4


def recipe() -> dict[str, str]:
    """The README's Browser subsection: its python and its html block, by language."""
    text = README.read_text()
    section = text.split("\n### Browser\n", 1)[1].split("\n## ", 1)[0]
    found = {
        match.group(1).split()[0]: match.group(2)
        for match in re.finditer(r"^```(\w[^\n]*)\n(.*?)^```$", section, re.S | re.M)
    }
    assert {"python", "html"} <= set(found), f"README's Browser subsection has blocks {sorted(found)}"
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The folder the reader ends up with (models and page), served on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("browser-recipe")
    blocks = recipe()
    subprocess.run([sys.executable, "-c", blocks["python"]], cwd=folder, check=True)
    assert CDN.search(blocks["html"]), "the page no longer loads onnxruntime-web from jsDelivr"
    (folder / "index.html").write_text(CDN.sub("ort/", blocks["html"]))
    os.symlink(os.path.join(os.environ["DCE_NODE_MODULES"], "onnxruntime-web", "dist"), folder / "ort")
    server, url = _serve(str(folder))
    yield folder, url
    server.shutdown()


def page_statistics(log: str) -> tuple[str, str, list[int], float, float]:
    """(file, backend, dims, mean, max |x|) from the page's line."""
    match = re.search(r"(\S+) on (\w+): output \[([\d, ]+)\], mean (\S+), max \|x\| (\S+)", log)
    assert match, f"the page printed {log!r}"
    dims = [int(d) for d in match.group(3).split(",")]
    return match.group(1), match.group(2), dims, float(match.group(4)), float(match.group(5))


@pytest.mark.parametrize(("mode", "backend"), [("webgpu", "webgpu"), ("no-gpu", "wasm")])
def test_browser_recipe(served: Any, mode: str, backend: str, tmp_path: Path) -> None:
    folder, url = served
    command = [
        "node",
        os.path.join(HERE, "browser_page.mjs"),
        f"{url}/index.html",
        str(tmp_path / "profile"),
        mode,
    ]
    driven = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": os.environ["DCE_NODE_MODULES"]},
        timeout=900,
    )
    assert driven.returncode == 0, driven.stderr[-2000:]
    shown = json.loads(driven.stdout.strip().splitlines()[-1])
    assert not shown["errors"], f"the page raised {shown['errors']}"
    file, used, dims, mean, largest = page_statistics(shown["log"])
    # SwiftShader has no shader-f16, so the page must keep to the float32 file there
    assert (file, used) == ("model.onnx", backend), shown["log"]
    size = re.search(r"const \[height, width\] = \[(\d+), (\d+)\]", recipe()["html"])
    assert size, "the page no longer sets its input size as the test reads it"
    height, width = int(size.group(1)), int(size.group(2))
    with torch.no_grad():
        expected = build_demo_model()(torch.full((1, 3, height, width), 0.5)).double().numpy()
    assert dims == list(expected.shape)
    scale = np.abs(expected).max()
    assert abs(mean - expected.mean()) <= TOLERANCE * scale, (mean, expected.mean())
    assert abs(largest - scale) <= TOLERANCE * scale, (largest, scale)

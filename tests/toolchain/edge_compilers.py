"""The edge compilers among the deployment tools: TVM (Relax) and MNN, each as a runner of tools.py.

Both take the ONNX file, compile or convert it once, and run every input on the result in order, as
an application that loads a model once would.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
from models import INPUT, OUTPUT, Variant


def run_tvm(path: str, variant: Variant, inputs: list[np.ndarray], folder: str) -> list[np.ndarray]:
    """TVM's Relax ONNX frontend, compiled for the CPU (``llvm``) and run on the Relax VM.

    Dynamic sizes stay symbolic in Relax: one compiled module runs every input size.
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    executable = tvm.compile(from_onnx(onnx.load(path)), target="llvm")
    machine = relax.VirtualMachine(executable, tvm.cpu())
    return [machine["main"](tvm.runtime.tensor(x)).numpy() for x in inputs]


#: Runs MNN's converter, the ``_tools`` extension its wheel ships. Not its ``mnnconvert`` script:
#: that one imports a logger which, without ``aliyun-log-python-sdk``, runs ``pip install`` with
#: whatever pip is first on PATH (another Python's, here), and uploads each conversion's arguments
#: and the machine id to Alibaba's log service.
_CONVERT = "import sys, _tools; _tools.mnnconvert(['mnnconvert', *sys.argv[1:]])"


def run_mnn(path: str, variant: Variant, inputs: list[np.ndarray], folder: str) -> list[np.ndarray]:
    """MNN's converter (ONNX -> .mnn, in a process of its own), then one MNN module runs every input.

    The module keeps symbolic sizes and resizes itself for each input (``shape_mutable``, its
    default), at MNN's default precision (float32 on x86).
    """
    import MNN.expr as F
    import MNN.nn

    converted = os.path.join(folder, "model.mnn")
    command = [sys.executable, "-c", _CONVERT, "-f", "ONNX", "--modelFile", path, "--MNNModel", converted]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0 or not os.path.exists(converted):
        lines = (process.stdout + process.stderr).strip().splitlines()
        raise RuntimeError(f"MNN's converter exited with {process.returncode}: {' | '.join(lines[-3:])}")
    module = MNN.nn.load_module_from_file(converted, [INPUT], [OUTPUT])
    outputs = []
    for x in inputs:
        # the module may answer in MNN's packed NC4HW4 layout
        out = F.convert(module.forward(F.const(x, list(x.shape), F.NCHW)), F.NCHW)
        outputs.append(np.array(out.read()))
    return outputs

"""Convert ONNX models with onnx2tf and run the float32 TFLite files in TFLite's interpreter.

Runs in onnx2tf's own venv (noxfile.py, ``TOOLCHAIN["onnx2tf"]``), not in the test's: onnx2tf pins
older onnx, onnxruntime and numpy. Usage: ``python onnx2tf_run.py JOBS.json``; JOBS.json lists
``{name, model, inputs: [.npy], shape}``; writes ``JOBS.json.results``: for each "name.index" either
``{"npy": path}`` of the output (in the ONNX model's layout) or the error's text.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys

import numpy as np

# onnx2tf loads 20 sample images from GitHub to check a converted model that takes 4-D 3-channel
# images, unless a file of this name is in the working directory: these tests stay offline.
SAMPLES = "calibration_image_sample_data_20x128x128x3_float32.npy"


def convert(model: str, shape: list[int], folder: str) -> str:
    import onnx2tf

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            _convert(onnx2tf, model, shape, folder)
    except BaseException as error:  # onnx2tf calls sys.exit on some failures
        # onnx2tf prints the ONNX node it failed on; the error's last line says why
        node = re.findall(r"onnx_op_name: (\S+)", printed.getvalue())
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        raise RuntimeError(f"onnx2tf at node {node[-1] if node else '?'}: {type(error).__name__}: "
                           f"{lines[-1][:300] if lines else ''}") from error
    name = os.path.splitext(os.path.basename(model))[0]
    return os.path.join(folder, f"{name}_float32.tflite")


def _convert(onnx2tf: object, model: str, shape: list[int], folder: str) -> None:
    onnx2tf.convert(  # type: ignore[attr-defined]input_onnx_file_path=model, output_folder_path=folder, non_verbose=True,
                    overwrite_input_shape=[f"image:{','.join(map(str, shape))}"],
                    keep_ncw_or_nchw_or_ncdhw_input_names=["image"])


def run(tflite: str, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=tflite)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    # onnx2tf writes channels-last outputs: (B, H, W, C) back to the ONNX model's (B, C, H, W)
    return np.transpose(y, (0, 3, 1, 2))


def main(jobs_path: str) -> None:
    np.save(SAMPLES, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    with open(jobs_path) as file:
        jobs = json.load(file)
    results: dict[str, object] = {}
    for job in jobs:
        folder = os.path.abspath(f"tflite-{job['name']}")
        try:
            tflite = convert(job["model"], job["shape"], folder)
        except RuntimeError as error:
            results.update({f"{job['name']}.{i}": str(error) for i in range(len(job["inputs"]))})
            continue
        for index, data in enumerate(job["inputs"]):
            key = f"{job['name']}.{index}"
            x = np.load(data)
            if list(x.shape) != job["shape"]:
                results[key] = f"TFLite model has fixed input shape {job['shape']}, not {list(x.shape)}"
                continue
            try:
                out = os.path.join(folder, f"output.{index}.npy")
                np.save(out, run(tflite, x))
                results[key] = {"npy": out}
            except Exception as error:
                results[key] = f"TFLite interpreter: {type(error).__name__}: {error}"
    with open(jobs_path + ".results", "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main(sys.argv[1])

"""Convert ONNX models with onnx2tf and run the float32 .tflite files in the LiteRT interpreter.

Runs in onnx2tf's own venv (noxfile.py, ``TOOLCHAIN["onnx2tf"]``), not in the test's: onnx2tf pins
its own onnx, onnxruntime, numpy and protobuf, and needs Python 3.12. Usage: ``python onnx2tf_run.py
JOBS.json``; JOBS.json lists ``{name, model, inputs: [.npy], shape}``; writes ``JOBS.json.results``:
for each "name.index" either ``{"npy": path}`` of the output (in the ONNX model's layout) or the
error's full text.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def convert(model: str, shape: list[int], folder: str) -> str:
    """The float32 .tflite file of ``model`` with its input fixed to ``shape`` (kept channels-first).

    onnx2tf's default backend (``flatbuffer_direct``) writes the file itself, without TensorFlow.
    """
    import onnx2tf

    try:
        onnx2tf.convert(
            input_onnx_file_path=model,
            output_folder_path=folder,
            non_verbose=True,
            overwrite_input_shape=[f"image:{','.join(map(str, shape))}"],
            keep_ncw_or_nchw_or_ncdhw_input_names=["image"],
        )
    except BaseException as error:  # onnx2tf prints what failed, then calls sys.exit
        raise RuntimeError(f"onnx2tf: {type(error).__name__}: {error}") from error
    name = os.path.splitext(os.path.basename(model))[0]
    return os.path.join(folder, f"{name}_float32.tflite")


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
    # onnx2tf fixes the input shape by running the command `onnxsim` it finds on PATH: this venv's,
    # not another environment's (the test's has a newer onnxsim), nor none (then it converts the
    # model with symbolic sizes, which fails)
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
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
                results[key] = f"LiteRT interpreter: {type(error).__name__}: {error}"
    with open(jobs_path + ".results", "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main(sys.argv[1])

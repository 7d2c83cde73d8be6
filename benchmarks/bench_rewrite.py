"""Time and peak memory of ``deform-conv2d-onnx decompose`` on a large model, beside onnx.load + onnx.save.

The model: a chain of mmcv DCNv2 nodes (``mmcv::MMCVModulatedDeformConv2d``, opset 11 as mmcv
exports), each fed by a Conv that predicts its offsets and mask, with about 1 GB of weights in an
external data file. Each step runs in a fresh process that does only that step, and reports its
wall time and its peak resident memory: ``resource.getrusage``'s ``ru_maxrss`` and Linux's VmHWM,
which agree here because the parent stays small (Linux carries ru_maxrss over from the parent
across fork and exec). The goal: the rewrite's peak within 2x the model's size.

    python benchmarks/bench_rewrite.py                      # 52 nodes, 720 channels: ~1 GB
    python benchmarks/bench_rewrite.py --nodes 8 --channels 256 --lowering native
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any


def make_model(path: str, nodes: int, channels: int, size: int) -> None:
    """Write the chain of ``nodes`` DCNv2 of ``channels`` channels on a ``size`` x ``size`` image."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    taps = 9
    graph_nodes, initializers = [], []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        values = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(np.prod(shape[1:])))
        initializers.append(numpy_helper.from_array(values, name))
        return name

    def ints(name: str, values: list[int]) -> str:
        initializers.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    ints("offset_start", [0]), ints("mask_start", [2 * taps]), ints("mask_end", [3 * taps]), ints("axis", [1])
    x = "x"
    for i in range(nodes):
        # offsets and mask from a 3x3 Conv, as mmcv's ModulatedDeformConv2dPack predicts them
        predicted = [f"predicted{i}", f"offset{i}", f"mask_logits{i}", f"mask{i}", f"y{i}"]
        conv_w, conv_b = weight(f"conv{i}.w", (3 * taps, channels, 3, 3)), weight(f"conv{i}.b", (3 * taps,))
        graph_nodes += [
            helper.make_node("Conv", [x, conv_w, conv_b], [predicted[0]], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Slice", [predicted[0], "offset_start", "mask_start", "axis"], [predicted[1]]),
            helper.make_node("Slice", [predicted[0], "mask_start", "mask_end", "axis"], [predicted[2]]),
            helper.make_node("Sigmoid", [predicted[2]], [predicted[3]]),
        ]
        dcn_w, dcn_b = weight(f"dcn{i}.w", (channels, channels, 3, 3)), weight(f"dcn{i}.b", (channels,))
        dcn = helper.make_node(
            "MMCVModulatedDeformConv2d",
            [x, predicted[1], predicted[3], dcn_w, dcn_b],
            [predicted[4]],
            name=f"dcn{i}",
            domain="mmcv",
            stride=[1, 1],
            padding=[1, 1],
            dilation=[1, 1],
            groups=1,
            deform_groups=1,
        )
        graph_nodes.append(dcn)
        x = predicted[4]
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        graph_nodes,
        "dcn_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 11), helper.make_opsetid("mmcv", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    location = os.path.basename(path) + ".data"
    onnx.save(model, path, save_as_external_data=True, location=location, size_threshold=1024)


def _baseline(source: str, target: str) -> None:
    import onnx

    model = onnx.load(source)
    onnx.save(model, target, save_as_external_data=True, location=os.path.basename(target) + ".data")


def _rewrite(source: str, target: str, lowering: str) -> None:
    from deform_conv2d_onnx_exporter.__main__ import main

    if main(["decompose", source, target, "--lowering", lowering]) != 0:
        raise SystemExit("the rewrite failed")


def _child(step: str, arguments: list[str]) -> None:
    """Run one step and print its wall time and peak memory as JSON (the last line of stdout)."""
    start = time.perf_counter()
    if step == "make":
        make_model(arguments[0], int(arguments[1]), int(arguments[2]), int(arguments[3]))
    elif step == "baseline":
        _baseline(*arguments)
    else:
        _rewrite(*arguments)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as status:
        vmhwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    rusage_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "ru_maxrss_mb": rusage_kb / 1024, "vmhwm_mb": vmhwm_kb / 1024}))


def run_step(step: str, *arguments: str) -> dict[str, Any]:
    """One step in a fresh process; its JSON report."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", step, *arguments], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _size_mb(path: str) -> float:
    folder, name = os.path.split(path)
    return (
        sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.startswith(name))
        / 2**20
    )


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=52)
    parser.add_argument("--channels", type=int, default=720)
    parser.add_argument("--size", type=int, default=16, help="height and width of the image")
    parser.add_argument("--lowering", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "model.onnx")
        made = run_step("make", source, str(args.nodes), str(args.channels), str(args.size))
        size = _size_mb(source)
        print(f"model: {args.nodes} mmcv::MMCVModulatedDeformConv2d, {args.channels} channels, {size:.0f} MB")
        print(f"(written in {made['seconds']:.1f} s)")
        print(f"{'step':<34} {'time (s)':>9} {'ru_maxrss (MB)':>15} {'VmHWM (MB)':>11} {'peak / model':>13}")
        rows = [
            ("onnx.load + onnx.save", run_step("baseline", source, os.path.join(folder, "copy.onnx"))),
            (
                f"decompose --lowering {args.lowering}",
                run_step("rewrite", source, os.path.join(folder, "rewritten.onnx"), args.lowering),
            ),
        ]
        for name, row in rows:
            print(
                f"{name:<34} {row['seconds']:>9.1f} {row['ru_maxrss_mb']:>15.0f} {row['vmhwm_mb']:>11.0f} "
                f"{row['ru_maxrss_mb'] / size:>12.2f}x"
            )
        print(f"rewritten model: {_size_mb(os.path.join(folder, 'rewritten.onnx')):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

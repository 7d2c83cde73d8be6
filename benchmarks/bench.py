"""Speed and memory of each lowering against ONNX Runtime's native DeformConv, side by side.

For every shape, in one process and interleaved run by run, it times on ONNX Runtime's CPU provider
(2 intra-op threads, no spinning): torchvision's eager kernel, ORT running native DeformConv, each
decomposition, and a dense Conv of the same shape (the floor). Each model's output is checked against
torchvision first; a lowering that is wrong is reported as WRONG, without numbers. Beside the
wall-clock ratio, CPU/nat is the ratio of the process's CPU time per call: the work done, which a
loaded machine disturbs less than the wall clock.

Peak memory is the high-water mark of the resident set of a fresh process that only loads and
runs that one model (Linux: /proc/self/status VmHWM).

    python benchmarks/bench.py                 # every shape
    python benchmarks/bench.py --shapes 0 2    # some of them
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

THREADS = 2


@dataclass(frozen=True)
class Shape:
    """One benchmark shape; pairs are square."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    groups: int
    offset_groups: int
    mask: bool

    def __str__(self) -> str:
        return (
            f"B{self.batch} {self.in_channels}->{self.out_channels} {self.height}x{self.width} "
            f"k{self.kernel} s{self.stride} p{self.padding} d{self.dilation} g{self.groups} "
            f"og{self.offset_groups} {'mask' if self.mask else 'no mask'}"
        )

    @property
    def out_size(self) -> int:
        return (self.height + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) // self.stride + 1


SHAPES = [
    Shape(1, 256, 256, 50, 50, 3, 1, 1, 1, 1, 1, True),
    Shape(1, 128, 128, 100, 100, 3, 1, 1, 1, 1, 1, True),
    Shape(2, 64, 64, 64, 64, 3, 1, 1, 1, 1, 1, True),
    Shape(8, 32, 64, 32, 32, 3, 2, 1, 1, 1, 1, False),
    Shape(1, 64, 64, 64, 64, 3, 1, 2, 2, 2, 4, True),
    Shape(1, 256, 256, 32, 32, 7, 1, 3, 1, 1, 1, True),
]
DEFAULT = "gather_rows"  # what lowering="auto" writes


def session(path: str):  # noqa: ANN201 - onnxruntime is imported lazily
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    # An idle session's spinning threads would slow the next session's run 2-3x.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def make_case(shape: Shape, seed: int = 0) -> tuple[object, dict[str, np.ndarray]]:
    """A module calling torchvision's deform_conv2d, and its inputs (offsets up to a few pixels)."""
    import torch
    import torchvision

    generator = torch.Generator().manual_seed(seed)
    k, og, o = shape.kernel, shape.offset_groups, shape.out_size

    class Call(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            weight = torch.randn(
                shape.out_channels, shape.in_channels // shape.groups, k, k, generator=generator
            ) / math.sqrt(shape.in_channels * k * k)
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(torch.randn(shape.out_channels, generator=generator))

        def forward(
            self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor] = None
        ) -> torch.Tensor:
            return torchvision.ops.deform_conv2d(
                x, offset, self.weight, self.bias, shape.stride, shape.padding, shape.dilation, mask
            )

    inputs = {
        "x": torch.randn(shape.batch, shape.in_channels, shape.height, shape.width, generator=generator),
        "offset": torch.randn(shape.batch, 2 * og * k * k, o, o, generator=generator) * 2.0,
    }
    if shape.mask:
        inputs["mask"] = torch.rand(shape.batch, og * k * k, o, o, generator=generator)
    return Call().eval(), {name: t.numpy() for name, t in inputs.items()}


def export_lowering(module: object, inputs: dict[str, np.ndarray], lowering: str, path: str) -> float:
    """Export with the legacy exporter at opset 19 (native needs it); returns seconds."""
    import torch

    import deform_conv2d_onnx_exporter as dce

    args = tuple(torch.from_numpy(a) for a in inputs.values())
    start = time.perf_counter()
    dce.export(
        module,
        args,
        path,
        dynamo=False,
        lowering=lowering,
        opset_version=19,
        input_names=list(inputs),
        output_names=["out"],
    )
    return time.perf_counter() - start


def export_dense_conv(shape: Shape, path: str) -> None:
    """The same convolution without offsets: the work a deformable conv cannot avoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = shape.kernel
    weight = (
        np.random.default_rng(0)
        .standard_normal((shape.out_channels, shape.in_channels // shape.groups, k, k))
        .astype(np.float32)
    )
    node = helper.make_node(
        "Conv",
        ["x", "w"],
        ["out"],
        kernel_shape=[k, k],
        strides=[shape.stride] * 2,
        pads=[shape.padding] * 4,
        dilations=[shape.dilation] * 2,
        group=shape.groups,
    )
    graph = helper.make_graph(
        [node],
        "dense",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, [shape.batch, shape.in_channels, shape.height, shape.width]
            )
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)


def interleaved_times(
    runs: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Milliseconds per call of each runner, timed one call each in turn, after a warm-up.

    Returns:
        (wall-clock, CPU) times: the process's CPU time of a call counts the work of both threads
        and not the time spent waiting for a core, so it stays comparable on a loaded machine.
    """
    for run in runs.values():
        start = time.perf_counter()
        while time.perf_counter() - start < 0.05:  # warm up by time, not by count
            run()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return wall, cpu


def peak_memory_mb(model: str, inputs: str) -> float:
    """Max RSS of a fresh process that loads and runs only this model."""
    out = subprocess.run(
        [sys.executable, __file__, "--peak", model, inputs], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip())


def _peak_child(model: str, inputs: str) -> None:
    data = dict(np.load(inputs))
    sess = session(model)
    for _ in range(3):
        sess.run(None, data)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent across
    # fork and exec, so a child of a large benchmark process would report the parent's peak.
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(peak_kb / 1024)


@dataclass
class Row:
    name: str
    times: list[float]
    cpu_times: list[float] = dataclasses.field(default_factory=list)
    nodes: Optional[int] = None
    export_s: Optional[float] = None
    peak_mb: Optional[float] = None
    wrong: Optional[float] = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times)

    @property
    def spread(self) -> float:
        q = statistics.quantiles(self.times, n=4)
        return q[2] - q[0]


def bench_shape(shape: Shape, repeats: int, lowerings: list[str], folder: str) -> list[Row]:
    import onnx
    import torch

    torch.set_num_threads(THREADS)
    module, inputs = make_case(shape)
    tensors = [torch.from_numpy(a) for a in inputs.values()]
    with torch.no_grad():
        expected = module(*tensors).numpy()

    rows: list[Row] = []
    runs: dict[str, Callable[[], object]] = {}
    with torch.no_grad():
        runs["torchvision"] = lambda: module(*tensors)
    rows.append(Row("torchvision", []))
    for lowering in ["native", *lowerings, "dense conv"]:
        path = os.path.join(folder, f"{lowering}.onnx")
        row = Row(lowering, [])
        feed = inputs
        if lowering == "dense conv":
            export_dense_conv(shape, path)
            feed = {"x": inputs["x"]}
        else:
            row.export_s = export_lowering(module, inputs, lowering, path)
        row.nodes = len(onnx.load(path).graph.node)
        sess = session(path)
        if lowering != "dense conv":
            (got,) = sess.run(None, feed)
            error = float(np.abs(got - expected).max())
            if not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
                row.wrong = error
                rows.append(row)
                continue
        runs[lowering] = lambda sess=sess, feed=feed: sess.run(None, feed)
        np.savez(os.path.join(folder, "feed.npz"), **feed)
        row.peak_mb = peak_memory_mb(path, os.path.join(folder, "feed.npz"))
        rows.append(row)
    wall, cpu = interleaved_times(runs, repeats)
    for row in rows:
        row.times, row.cpu_times = wall.get(row.name, []), cpu.get(row.name, [])
    return rows


def print_table(shape: Shape, rows: list[Row]) -> None:
    by_name = {r.name: r for r in rows}
    native, native_cpu = by_name["native"].median, by_name["native"].cpu_median
    dense = by_name["dense conv"].median
    print(f"\n{shape}")
    print(
        f"  {'variant':<15}{'median ms':>10}{'IQR ms':>8}{'/native':>9}{'CPU/nat':>9}{'/dense':>8}"
        f"{'nodes':>7}{'export s':>9}{'peak MB':>9}"
    )
    for r in rows:
        if r.wrong is not None:
            print(f"  {r.name:<15} WRONG: max error {r.wrong:.3g} against torchvision; not timed")
            continue
        cells = [
            f"{r.median:>10.2f}",
            f"{r.spread:>8.2f}",
            f"{r.median / native:>9.2f}",
            f"{r.cpu_median / native_cpu:>9.2f}",
            f"{r.median / dense:>8.2f}",
            f"{r.nodes if r.nodes is not None else '':>7}",
            f"{r.export_s:>9.2f}" if r.export_s is not None else f"{'':>9}",
            f"{r.peak_mb:>9.0f}" if r.peak_mb is not None else f"{'':>9}",
        ]
        print(f"  {r.name:<15}" + "".join(cells))


def markdown_row(shape: Shape, rows: list[Row]) -> str:
    """The shape's line of docs/speed.md's table: ratios to native, wall clock unless said."""
    by_name = {r.name: r for r in rows}
    native = by_name["native"]

    def ratio(name: str) -> str:
        row = by_name[name]
        return "WRONG" if row.wrong is not None else f"{row.median / native.median:.2f}×"

    lowerings = [r.name for r in rows if r.name not in ("torchvision", "native", "dense conv")]
    default = by_name[DEFAULT]
    memory = (default.peak_mb or 0) / (native.peak_mb or 1)
    cells = [
        str(shape),
        f"{native.median:.1f}",
        *[ratio(name) for name in lowerings],
        f"{default.cpu_median / native.cpu_median:.2f}×",
        ratio("torchvision"),
        ratio("dense conv"),
        f"{memory:.2f}×",
    ]
    return "| " + " | ".join(cells) + " |"


def geometric_mean(ratios: list[float]) -> float:
    return math.exp(sum(map(math.log, ratios)) / len(ratios))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", type=int, nargs="*", help="indices into SHAPES (default: all)")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--lowerings", nargs="*", help="default: every decomposition")
    parser.add_argument("--markdown", action="store_true", help="also print docs/speed.md's table")
    parser.add_argument("--peak", nargs=2, metavar=("MODEL", "INPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        _peak_child(*args.peak)
        return 0
    # imported after the --peak child has returned: it measures its own memory, with only its model
    from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

    if args.lowerings is None:
        args.lowerings = list(DECOMPOSITIONS)
    import onnxruntime
    import torch

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {THREADS} threads, "
        f"{args.repeats} interleaved runs; medians; load average {os.getloadavg()[0]:.1f}"
    )
    shapes = [SHAPES[i] for i in args.shapes] if args.shapes else SHAPES
    speed: list[float] = []
    cpu_speed: list[float] = []
    memory: list[float] = []
    wrong = False
    table: list[str] = []
    for shape in shapes:
        with tempfile.TemporaryDirectory() as folder:
            rows = bench_shape(shape, args.repeats, args.lowerings, folder)
        print_table(shape, rows)
        table.append(markdown_row(shape, rows))
        by_name = {r.name: r for r in rows}
        wrong = wrong or any(r.wrong is not None for r in rows)
        default = by_name.get(DEFAULT)
        if default is not None and default.wrong is None:
            speed.append(default.median / by_name["native"].median)
            cpu_speed.append(default.cpu_median / by_name["native"].cpu_median)
            memory.append((default.peak_mb or 0) / (by_name["native"].peak_mb or 1))
    if speed:
        print(
            f"\n{DEFAULT} / native: geometric mean {geometric_mean(speed):.2f}x, max {max(speed):.2f}x "
            f"(CPU time: {geometric_mean(cpu_speed):.2f}x, max {max(cpu_speed):.2f}x); "
            f"peak memory / native: max {max(memory):.2f}x; load average {os.getloadavg()[0]:.1f}"
        )
    if args.markdown:
        names = " | ".join(f"{n} (default)" if n == DEFAULT else n for n in args.lowerings)
        print(
            f"\n| shape (B Cin->Cout HxW k s p d g og) | native ms | {names} | {DEFAULT}, CPU time "
            f"| torchvision eager | dense Conv | peak memory, default / native |"
        )
        print("|---" * (len(args.lowerings) + 6) + "|")
        print("\n".join(table))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole models with deformable convolutions: each lowering against native DeformConv, side by side.

Two models, each exported once per lowering (legacy exporter, opset 19, static shapes):

- the demo's DCNv2 backbone (``deform_conv2d_onnx_exporter.demo``: a stem and three DCNv2 stages,
  offset groups 1, 2 and 4, kernels 3 and 5, two of them at stride 2), at three input sizes and
  batch 1 and 4;
- a decoder-style block: three feature maps of a pyramid (1/16, 1/8, 1/4 of the image), each
  aligned by a DCNv2 whose offsets are predicted from it and the upsampled coarser level, then
  fused, as in feature-alignment necks and video restoration decoders.

For every case, in one process and interleaved run by run on ONNX Runtime's CPU provider (2 intra-op
threads, no spinning, the settings of ``bench.py``), it times torchvision's eager model, the model
with native DeformConv and with each decomposition, after checking each output against torchvision.
Peak memory is the high-water mark of a fresh process that loads and runs only that model.

    python benchmarks/bench_models.py                    # every case
    python benchmarks/bench_models.py --cases 0 3        # some of them
    python benchmarks/bench_models.py --lowerings grid_sample gather_rows
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (  # noqa: E402 - bench.py sits beside this file, not in a package
    DEFAULT,
    THREADS,
    Row,
    geometric_mean,
    interleaved_times,
    peak_memory_mb,
    session,
)

#: Outputs of whole models are sums of many products: a looser bound than one call's 1e-4.
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Case:
    """One model at one input size."""

    model: str  # "backbone" or "decoder"
    batch: int
    size: int  # square input images

    def __str__(self) -> str:
        return f"{self.model} B{self.batch} {self.size}x{self.size}"


CASES = [
    Case("backbone", 1, 128),
    Case("backbone", 4, 128),
    Case("backbone", 1, 192),
    Case("backbone", 1, 256),
    Case("backbone", 4, 256),
    Case("decoder", 1, 256),
    Case("decoder", 4, 256),
]


def build_decoder(seed: int = 0) -> object:
    """The decoder-style block, in eval mode with random weights."""
    import torch
    from torch import nn
    from torchvision.ops import DeformConv2d

    class AlignedLevel(nn.Module):
        """Offsets and mask from [feature, upsampled coarser]; DCNv2 aligns the feature; fuse."""

        def __init__(self, channels: int, offset_groups: int) -> None:
            super().__init__()
            taps = 9
            self.split = 2 * offset_groups * taps
            self.predict = nn.Conv2d(2 * channels, 3 * offset_groups * taps, 3, padding=1)
            self.align = DeformConv2d(channels, channels, 3, padding=1)
            self.fuse = nn.Conv2d(channels, channels, 1)

        def forward(self, feature: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
            up = nn.functional.interpolate(
                coarser, size=feature.shape[-2:], mode="bilinear", align_corners=False
            )
            predicted = self.predict(torch.cat([feature, up], dim=1))
            offset = predicted[:, : self.split] * 2.0
            mask = torch.sigmoid(predicted[:, self.split :])
            return torch.relu(self.fuse(self.align(feature, offset, mask)) + up)

    class Decoder(nn.Module):
        """Image (B, 3, H, W) -> (B, 32, H/4, W/4) through a three-level pyramid."""

        def __init__(self) -> None:
            super().__init__()
            self.down = nn.ModuleList(
                [
                    nn.Conv2d(3, 32, 3, stride=4, padding=1),
                    nn.Conv2d(32, 64, 3, stride=2, padding=1),
                    nn.Conv2d(64, 64, 3, stride=2, padding=1),
                ]
            )
            self.top = DeformConv2d(64, 64, 3, padding=1)
            self.top_offset = nn.Conv2d(64, 27, 3, padding=1)
            self.levels = nn.ModuleList([AlignedLevel(64, 1), AlignedLevel(32, 2)])
            self.reduce = nn.Conv2d(64, 32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            quarter = torch.relu(self.down[0](x))  # (B, 32, H/4, W/4)
            eighth = torch.relu(self.down[1](quarter))  # (B, 64, H/8, W/8)
            sixteenth = torch.relu(self.down[2](eighth))  # (B, 64, H/16, W/16)
            predicted = self.top_offset(sixteenth)
            top = torch.relu(self.top(sixteenth, predicted[:, :18], torch.sigmoid(predicted[:, 18:])))
            eighth = self.levels[0](eighth, top)  # (B, 64, H/8, W/8)
            return self.levels[1](quarter, self.reduce(eighth))  # (B, 32, H/4, W/4)

    torch.manual_seed(seed)
    return Decoder().eval()


def build(case: Case) -> object:
    from deform_conv2d_onnx_exporter.demo import build_demo_model

    return build_demo_model() if case.model == "backbone" else build_decoder()


def export_model(model: object, x: np.ndarray, lowering: str, path: str) -> None:
    """Legacy exporter at opset 19 (native needs it), static shapes."""
    import torch

    import deform_conv2d_onnx_exporter as dce

    dce.export(
        model,
        (torch.from_numpy(x),),
        path,
        dynamo=False,
        lowering=lowering,
        opset_version=19,
        input_names=["image"],
        output_names=["out"],
    )


def bench_case(case: Case, repeats: int, lowerings: list[str], folder: str) -> list[Row]:
    import torch

    torch.set_num_threads(THREADS)
    model = build(case)
    x = np.random.default_rng(0).standard_normal((case.batch, 3, case.size, case.size)).astype(np.float32)
    tensor = torch.from_numpy(x)
    with torch.no_grad():
        expected = model(tensor).numpy()  # type: ignore[operator]
    feed = {"image": x}
    feed_path = os.path.join(folder, "feed.npz")
    np.savez(feed_path, **feed)

    rows = [Row("torchvision", [])]
    runs: dict[str, Callable[[], object]] = {}
    with torch.no_grad():
        runs["torchvision"] = lambda: model(tensor)  # type: ignore[operator]
    for lowering in ["native", *lowerings]:
        path = os.path.join(folder, f"{lowering}.onnx")
        export_model(model, x, lowering, path)
        row = Row(lowering, [])
        sess = session(path)
        (got,) = sess.run(None, feed)
        if not np.allclose(got, expected, atol=TOLERANCE, rtol=TOLERANCE):
            row.wrong = float(np.abs(got - expected).max())
        else:
            runs[lowering] = lambda sess=sess: sess.run(None, feed)
            row.peak_mb = peak_memory_mb(path, feed_path)
        rows.append(row)
    wall, cpu = interleaved_times(runs, repeats)
    for row in rows:
        row.times, row.cpu_times = wall.get(row.name, []), cpu.get(row.name, [])
    return rows


def main() -> int:
    from deform_conv2d_onnx_exporter.lowering import DECOMPOSITIONS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, nargs="*", help="indices into CASES (default: all)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--lowerings", nargs="*", default=DECOMPOSITIONS)
    args = parser.parse_args()
    import onnxruntime
    import torch

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {THREADS} threads, "
        f"{args.repeats} interleaved runs; medians; load average {os.getloadavg()[0]:.1f} at start"
    )
    cases = [CASES[i] for i in args.cases] if args.cases else CASES
    names = ["native", *args.lowerings, "torchvision"]
    header = "".join(f"{n:>17}" for n in names)
    print(
        f"\nratios to native DeformConv, wall clock / CPU time (native: wall ms / CPU ms);"
        f" last column: peak memory {DEFAULT} / native"
    )
    print(f"{'case':<24}{header}{'peak':>7}")
    speed: list[float] = []
    cpu_speed: list[float] = []
    wrong = False
    for case in cases:
        with tempfile.TemporaryDirectory() as folder:
            rows = {r.name: r for r in bench_case(case, args.repeats, args.lowerings, folder)}
        native, native_cpu = rows["native"].median, rows["native"].cpu_median
        cells = []
        for name in names:
            row = rows[name]
            if row.wrong is not None:
                wrong = True
                cells.append(f"{'WRONG ' + format(row.wrong, '.1g'):>17}")
            elif name == "native":
                cells.append(f"{f'{native:.1f}/{native_cpu:.1f}ms':>17}")
            else:
                cells.append(f"{f'{row.median / native:.2f}/{row.cpu_median / native_cpu:.2f}x':>17}")
        default = rows.get(DEFAULT)
        peak = ""
        if default is not None and default.wrong is None:
            speed.append(default.median / native)
            cpu_speed.append(default.cpu_median / native_cpu)
            peak = f"{(default.peak_mb or 0) / (rows['native'].peak_mb or 1):>6.2f}x"
        print(f"{str(case):<24}" + "".join(cells) + peak, flush=True)
    if speed:
        print(
            f"\n{DEFAULT} / native: geometric mean {geometric_mean(speed):.2f}x, max {max(speed):.2f}x "
            f"(CPU time: {geometric_mean(cpu_speed):.2f}x, max {max(cpu_speed):.2f}x); "
            f"load average {os.getloadavg()[0]:.1f} at end"
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - start:.0f} s)")
    sys.exit(code)

"""What exporting costs: file size and export time of ``export()``'s default against native DeformConv.

Whole models (bench_models.py's decoder and the demo backbone) at a large input, exported by
``dce.export`` on the dynamo exporter with static sizes, the default lowering and ``native``
(opset 19) alternately, each ``--repeats`` times; medians, and the ratios to native.

    python benchmarks/export_cost.py                  # 1024x1024
    python benchmarks/export_cost.py --size 512 --repeats 2
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import build_decoder  # noqa: E402 - a sibling file


def export_once(model: object, size: int, lowering: str) -> tuple[float, int]:
    """(seconds, bytes) of one export of ``model`` at a (1, 3, size, size) input."""
    import torch

    import deform_conv2d_onnx_exporter as dce

    buffer = io.BytesIO()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dce.export(
            model, (torch.randn(1, 3, size, size),), buffer, dynamo=True, lowering=lowering, opset_version=19
        )
    return time.perf_counter() - started, len(buffer.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from deform_conv2d_onnx_exporter.demo import build_demo_model

    models = {"decoder": build_decoder(), "backbone": build_demo_model()}
    print(
        f"dce.export, dynamo exporter, static sizes, 1x3x{args.size}x{args.size}; medians of {args.repeats}"
    )
    print(f"{'model':<10} {'lowering':<8} {'export s':>9} {'MB':>8} {'time/native':>12} {'size/native':>12}")
    for name, model in models.items():
        runs: dict[str, list[tuple[float, int]]] = {"native": [], "auto": []}
        for _ in range(args.repeats):
            for lowering in runs:  # alternately, so that a busy spell slows both
                runs[lowering].append(export_once(model, args.size, lowering))
        seconds = {lowering: statistics.median(t for t, _ in found) for lowering, found in runs.items()}
        size = {lowering: found[0][1] for lowering, found in runs.items()}
        for lowering in runs:
            print(
                f"{name:<10} {lowering:<8} {seconds[lowering]:9.2f} {size[lowering] / 1e6:8.2f} "
                f"{seconds[lowering] / seconds['native']:11.2f}x {size[lowering] / size['native']:11.3f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

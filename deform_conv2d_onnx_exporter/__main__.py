"""Command line: ``python -m deform_conv2d_onnx_exporter demo``."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence

#: The demo's pass mark for float32 (the test suite's tolerance).
TOLERANCE = 1e-4


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deform_conv2d_onnx_exporter")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="export a small DCNv2 backbone both ways, run it on ONNX Runtime and print the "
        "max error against torchvision",
    )
    demo.add_argument("--exporter", choices=["legacy", "dynamo"], action="append",
                      help="only this exporter (repeatable); default: every one torch has")
    args = parser.parse_args(argv)

    import torch

    from . import demo as demo_module

    warnings.simplefilter("ignore")  # the exporters' deprecation chatter hides the result
    print(f"torch {torch.__version__}; DCNv2 backbone, exported with dynamic batch/height/width")
    errors = demo_module.run(args.exporter)
    print(f"{'exporter':<10} {'input (B,C,H,W)':<18} {'max |ORT - torch|':>18}")
    worst = 0.0
    for exporter, values in errors.items():
        for shape, error in zip(["1x3x64x64", "2x3x48x80", "3x3x33x17"], values):
            print(f"{exporter:<10} {shape:<18} {error:>18.3g}")
            worst = max(worst, error)
    verdict = "OK" if worst <= TOLERANCE else "FAILED"
    print(f"{verdict}: worst error {worst:.3g} (tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())

"""Each lowering's error in the half-precision pipelines, as a multiple of the floor (README, "Precision").

The model, the pipelines and the floor are those of the precision tests (tests/half_precision.py).
For every size the model is exported once with native DeformConv (dynamo exporter, static sizes),
rewritten with each lowering by ``decompose_model``, and run through every pipeline. Each cell is
error / floor; the floor row gives the floor itself.

    python benchmarks/precision.py                                   # every lowering and size
    python benchmarks/precision.py --lowerings gather_rows --sizes 64 1024
    python benchmarks/precision.py --keep-sampling-in-float32        # the recipe for grid_sample
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import warnings

import onnx
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "precision"))
import half_precision  # noqa: E402 - the tests' module, not a package

import deform_conv2d_onnx_exporter as dce  # noqa: E402


def native_export(size: str) -> onnx.ModelProto:
    """The precision model with native DeformConv, at ``size``, static."""
    model, x = half_precision.build_model(), torch.from_numpy(half_precision.make_input(size))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dce.export(model, (x,), buffer, lowering="native", opset_version=19, dynamo=True)
    return onnx.load_from_string(buffer.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lowerings",
        nargs="*",
        default=["auto", "gather_rows", "gathernd", "gatherelements", "grid_sample", "grid_sample_ncnn"],
    )
    parser.add_argument("--sizes", nargs="*", default=list(half_precision.SIZES))
    parser.add_argument("--pipelines", nargs="*", type=int, help="indices into PIPELINES (default: all)")
    parser.add_argument(
        "--keep-sampling-in-float32",
        action="store_true",
        help="pass sampling_nodes to the fp16 converters' node_block_list",
    )
    args = parser.parse_args()
    pipelines = (
        [half_precision.PIPELINES[i] for i in args.pipelines] if args.pipelines else half_precision.PIPELINES
    )
    print(f"package {dce.__file__}")
    print("cells: error / floor at " + " / ".join(args.sizes))
    natives = {size: native_export(size) for size in args.sizes}
    refs = {size: half_precision.reference(size) for size in args.sizes}
    for pipeline in pipelines:
        print(f"\n{pipeline.name}")
        floors: dict[str, str] = {}
        for lowering in args.lowerings:
            cells = []
            for size in args.sizes:
                model = dce.decompose_model(natives[size], lowering=lowering).model
                keep = dce.sampling_nodes(model) if args.keep_sampling_in_float32 else []
                x = half_precision.make_input(size)
                try:
                    out, half = pipeline.run(model, x, keep)
                except Exception as error:  # noqa: BLE001 - a table cell, not a crash
                    cells.append(f"fails ({type(error).__name__})")
                    continue
                ref = refs[size]
                floors[size] = f"{half} {ref.floor[half, False]:.1e}"
                cells.append(f"{ref.error(out) / ref.floor[half, False]:.1f}x")
            print(f"  {lowering:<18} " + " / ".join(cells), flush=True)
        print(f"  {'floor':<18} " + " / ".join(floors.get(size, "?") for size in args.sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

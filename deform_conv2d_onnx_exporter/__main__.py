"""Command line: ``deform-conv2d-onnx`` or ``python -m deform_conv2d_onnx_exporter``.

``decompose``, ``verify`` and ``info`` work on ONNX files without torch; ``demo`` needs torch.
Errors a user can fix (a file that cannot be read, a model without DeformConv, an attribute we
do not support) print one line on stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Callable, Optional, Sequence

import onnx

from . import __version__
from . import verify as verify_module
from .lowering import LOWERINGS
from .params import DeformConvExportError, show_shape
from .verify import ShapeOverrides
from .versions import missing_extra_message

PROG = "deform-conv2d-onnx"
#: The demo's and verify's pass mark for float32 (the test suite's tolerance).
TOLERANCE = 1e-4
#: From this many DeformConv nodes on, decompose prints a line per rewritten node.
PROGRESS_FROM = 8


class CommandError(Exception):
    """An error to report as one line on stderr."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (CommandError, DeformConvExportError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Export or rewrite deformable convolutions as standard ONNX operators."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    decompose = commands.add_parser(
        "decompose",
        help="rewrite every deformable convolution node of an ONNX model (DeformConv, or mmcv's, "
        "mmdeploy's or OpenVINO's) into standard operators",
    )
    decompose.add_argument("input", help="the model to read (.onnx)")
    decompose.add_argument("output", help="where to write the rewritten model")
    _add_lowering_arguments(decompose)
    decompose.set_defaults(run=_decompose)

    _add_verify_command(commands)

    info = commands.add_parser(
        "info", help="list the deformable convolution nodes of a model and their parameters"
    )
    info.add_argument("model", help="the model to read (.onnx)")
    info.set_defaults(run=_info)

    demo = commands.add_parser(
        "demo",
        help="export a small DCNv2 backbone both ways, run it on ONNX Runtime and print the "
        "max error against torchvision (needs torch)",
    )
    demo.add_argument(
        "--exporter",
        choices=["legacy", "dynamo"],
        action="append",
        help="only this exporter (repeatable); default: every one torch has",
    )
    demo.set_defaults(run=_demo)
    return parser


def _add_verify_command(commands: Any) -> None:
    """The ``verify`` subcommand and its options."""
    summary = (
        "run a model on ONNX Runtime with random inputs and print the max error against a model with "
        "native DeformConv; ONNX's reference evaluator runs it too where that takes seconds (up to "
        f"{verify_module.REFERENCE_EVALUATOR_MAX_SAMPLES:,} bilinear samples; --reference-evaluator: more)"
    )
    verify = commands.add_parser("verify", help=summary, description=summary)
    verify.add_argument("model", help="a decomposed model, or a model with DeformConv (decomposed in memory)")
    verify.add_argument(
        "--reference",
        metavar="ORIGINAL.onnx",
        help="the model with native DeformConv to compare with; default: MODEL itself",
    )
    verify.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="DIM=N|INPUT=AxBx...",
        help="size of a symbolic dimension, or the shape of one input (repeatable)",
    )
    verify.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    verify.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"largest accepted absolute error (default {TOLERANCE:g})",
    )
    verify.add_argument(
        "--reference-evaluator",
        action="store_true",
        help="also run ONNX's reference evaluator on a model above "
        f"{verify_module.REFERENCE_EVALUATOR_MAX_SAMPLES:,} bilinear samples, where it takes more than "
        "seconds (by default it runs only on smaller ones)",
    )
    _add_lowering_arguments(verify)
    verify.set_defaults(run=_verify)


def _add_lowering_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--opset", type=int, help="opset of the rewritten model, 12 or higher; default: the model's own"
    )
    parser.add_argument(
        "--lowering",
        choices=LOWERINGS,
        default="auto",
        help="how DeformConv is written (README, 'Lowerings'); default: auto",
    )


def _load(path: str, external_data: bool = True) -> onnx.ModelProto:
    """The model at ``path``, with its external data unless not ``external_data`` (its files must
    exist either way), or a CommandError saying why not."""
    if os.path.isdir(path):
        raise CommandError(f"cannot read {path}: is a directory")
    if not os.path.isfile(path):
        raise CommandError(f"cannot read {path}: no such file")
    try:
        model = onnx.load(path, load_external_data=external_data)
    except Exception as error:  # protobuf's DecodeError, missing external data, ...
        raise CommandError(f"cannot read {path} as an ONNX model: {error}") from error
    missing = [data for data in _files_read(path, model)[1:] if not os.path.isfile(data)]
    if missing:
        raise CommandError(f"cannot read {path} as an ONNX model: its external data {missing[0]} is missing")
    if not model.HasField("graph") or not model.opset_import:
        raise CommandError(f"cannot read {path} as an ONNX model: it has no graph or no opset")
    return model


def _decompose(args: argparse.Namespace) -> int:
    from .rewrite import data_bytes, decompose_model

    # the weights stay in their files until the rewrite reads them, one node at a time
    model = _load(args.input, external_data=False)
    data_file = os.path.basename(args.output) + ".data"
    read = _files_read(args.input, model)
    _refuse_to_overwrite_the_input(read, [args.output, os.path.join(os.path.dirname(args.output), data_file)])
    count = len(_main_graph_nodes(model))
    before = len(model.graph.node)

    def progress(done: int, total: int, name: str) -> None:
        if total >= PROGRESS_FROM:
            print(f"[{done}/{total}] rewrote {name!r}", file=sys.stderr, flush=True)

    # in place: the loaded model is ours, and a large one is then held once, not twice
    base_dir = os.path.dirname(os.path.abspath(args.input))
    result = decompose_model(
        model, args.opset, args.lowering, progress=progress, in_place=True, base_dir=base_dir
    )
    for found in result.left_in_subgraphs:
        print(
            f"{PROG}: warning: {found.describe()} left as it is (subgraphs are not rewritten)",
            file=sys.stderr,
        )
    # Weights stay in a side file when they came in one; protobuf cannot serialise 2 GB or more
    # in one message, so a large model's go to one too.
    external = len(read) > 1 or data_bytes(result.model) > 1_800_000_000
    try:
        onnx.save(result.model, args.output, save_as_external_data=external, location=data_file)
    except OSError as error:
        raise CommandError(f"cannot write {args.output}: {error.strerror or error}") from error
    opset = next(e.version for e in result.model.opset_import if e.domain in ("", "ai.onnx"))
    print(
        f"wrote {args.output}: {len(result.rewritten)} of {count} DeformConv nodes rewritten "
        f"(lowering {args.lowering}, opset {opset}); {before} nodes before, "
        f"{len(result.model.graph.node)} after"
    )
    return 0


def _files_read(input_path: str, model: onnx.ModelProto) -> list[str]:
    """The model file and the files of the external data ``model`` (read from it) refers to."""
    folder = os.path.dirname(input_path)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [input_path] + [os.path.join(folder, location) for location in sorted(locations)]


def _refuse_to_overwrite_the_input(read: list[str], outputs: list[str]) -> None:
    """A CommandError if writing ``outputs`` (the model and its weights file) would replace a
    file ``read`` (the input model or its external data), or if the model's path is a directory."""
    if os.path.isdir(outputs[0]):
        raise CommandError(f"cannot write {outputs[0]}: is a directory")
    for output in outputs:
        for source in read:
            if os.path.exists(output) and os.path.exists(source) and os.path.samefile(output, source):
                raise CommandError(
                    f"cannot write {outputs[0]}: it would overwrite {source}, which the input model "
                    f"is read from; write to another path"
                )


def _main_graph_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    from .rewrite import find_deform_convs

    return [f.node for f in find_deform_convs(model.graph) if not f.location]


def _verify(args: argparse.Namespace) -> int:
    verify = verify_module
    try:
        runtimes = [verify.onnxruntime_runtime()]
    except ModuleNotFoundError as missing:
        message = missing_extra_message("verify", missing)
        if message is None:
            raise
        raise CommandError(message) from missing
    candidate, reference = _verify_models(args)
    feeds = verify.random_inputs(candidate, _parse_shapes(args.shape), args.seed)
    for name, array in feeds.items():
        print(f"input {name}: {array.dtype} {show_shape(array.shape)}")
    samples = verify.bilinear_samples(reference, feeds)
    seconds = (
        "an unknown time"
        if samples is None
        else (f"about {samples / verify.REFERENCE_EVALUATOR_SAMPLES_PER_SECOND:.0f} s")
    )
    small = samples is not None and samples <= verify.REFERENCE_EVALUATOR_MAX_SAMPLES
    if args.reference_evaluator or small:
        runtimes.append(verify.reference_evaluator_runtime())

    def progress(model: str) -> Callable[[str], None]:
        # only the reference evaluator can take long, and only beyond the default budget
        return lambda runtime: (
            _progress(f"running {model} on {runtime} ({seconds})")
            if runtime.startswith("onnx.reference") and not small
            else None
        )

    runtime, expected = verify.reference_outputs(reference, feeds, progress("the reference"))
    print(f"reference: {args.reference or args.model} with native DeformConv on {runtime}")
    rows = verify.compare(candidate, feeds, expected, runtimes, progress(args.model))
    if len(runtimes) == 1:
        note = f"skipped: {samples or 'unknown'} samples, {seconds}; --reference-evaluator runs it"
        rows.append(verify.Comparison(f"onnx.reference {onnx.__version__}", "*", None, note))
    return _print_comparison(rows, args.tolerance)


def _verify_models(args: argparse.Namespace) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(candidate, reference): MODEL, decomposed in memory if it has DeformConv, and the model
    with DeformConv to compare with."""
    from .rewrite import decompose_model, find_deform_convs

    model = _load(args.model)
    reference = _load(args.reference) if args.reference else model
    if not _main_graph_nodes(reference):
        raise CommandError(
            f"{args.reference or args.model} has no DeformConv node to serve as the reference; "
            f"pass the original model with --reference ORIGINAL.onnx"
        )
    if not _main_graph_nodes(model):
        print(f"candidate: {args.model}")
        return model, reference
    if any(found.form.domain for found in find_deform_convs(reference.graph)):
        # no runtime runs mmcv's, mmdeploy's or OpenVINO's operators: compare with ONNX DeformConv
        print(f"reference: {args.reference or args.model} with its nodes written as ONNX DeformConv")
        reference = decompose_model(reference, lowering="native").model
    print(f"candidate: {args.model} decomposed in memory (lowering {args.lowering})")
    return decompose_model(model, args.opset, args.lowering).model, reference


def _progress(line: str) -> None:
    print(f"{PROG}: {line}...", file=sys.stderr, flush=True)


def _print_comparison(rows: list[verify_module.Comparison], tolerance: float) -> int:
    """The table of errors and the verdict; 0 when ONNX Runtime ran and stayed within tolerance."""
    print(f"{'runtime':<24} {'output':<16} {'max |candidate - reference|':>28}")
    worst = 0.0
    for row in rows:
        shown = f"{row.error:.3g}" if row.error is not None else row.note
        print(f"{row.runtime:<24} {row.output:<16} {shown:>28}")
        worst = max(worst, row.error if row.error is not None else 0.0)
    ran_on_ort = any(row.error is not None and row.runtime.startswith("onnxruntime") for row in rows)
    ok = ran_on_ort and worst <= tolerance
    print(f"{'OK' if ok else 'FAILED'}: worst error {worst:.3g} (tolerance {tolerance:g})")
    return 0 if ok else 1


def _parse_shapes(values: list[str]) -> ShapeOverrides:
    shapes: ShapeOverrides = {}
    for value in values:
        name, _, size = value.partition("=")
        try:
            dims = [int(d) for d in size.lower().split("x")]
        except ValueError:
            dims = []
        if not name or not dims or min(dims) < 0:
            raise CommandError(f"--shape: expected DIM=N or INPUT=AxBx... with sizes >= 0, got {value!r}")
        shapes[name] = dims[0] if len(dims) == 1 and "x" not in size.lower() else dims
    return shapes


def _info(args: argparse.Namespace) -> int:
    from .forms import read
    from .onnx_adapter import params_of
    from .rewrite import find_deform_convs, model_opset, opset_imports, tensor_facts

    model = _load(args.model, external_data=False)  # shapes are all info reads
    found = list(find_deform_convs(model.graph))
    if not found:
        raise CommandError(
            f"{args.model} has no deformable convolution node "
            f"(DeformConv, or mmcv's, mmdeploy's or OpenVINO's)"
        )
    facts = tensor_facts(model)
    print(f"{args.model}: opset {model_opset(model)}, {len(found)} deformable convolution node(s)")
    for item in found:
        node = item.node
        print(f"{item.describe()}:")
        for role, name in zip(item.form.inputs, node.input):
            if name:
                elem_type, shape = facts.get(name, (None, None))
                dtype = onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "?"
                print(f"  {role:<7} {name}: {dtype} {show_shape(shape)}")
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        print("  " + " ".join(f"{k}={v}" for k, v in sorted(attributes.items())))
        if item.location:
            print("  not rewritten by decompose (inside a subgraph)")
            continue
        try:
            params = params_of(read(node, item.form, opset_imports(model)), facts)
        except DeformConvExportError as error:
            print(f"  cannot be decomposed: {error}")
            continue
        print(
            f"  decomposes as: stride={params.stride} padding={params.padding} "
            f"dilation={params.dilation} groups={params.groups} "
            f"offset_groups={params.offset_groups} mask={params.use_mask} kernel={params.kernel}"
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        import torch

        from . import demo as demo_module
    except ModuleNotFoundError as missing:
        message = missing_extra_message("demo", missing)
        if message is None:
            raise
        raise CommandError(message) from missing

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

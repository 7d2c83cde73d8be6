"""Where a lowering spends its time: ONNX Runtime's per-node profile on the shapes of ``bench.py``.

For every shape and lowering it exports the call (as ``bench.py`` does), runs it with ORT's profiler
on (2 intra-op threads, no spinning), and prints each node's median time per run, largest first,
beside the session's median run time. Nodes whose share is below ``--min-share`` are summed into
one line. A model file can be profiled instead, with random inputs of its static shapes.

    python benchmarks/profile_nodes.py                               # default lowering, every shape
    python benchmarks/profile_nodes.py --lowerings grid_sample gather_rows --shapes 3 4 --by-op
    python benchmarks/profile_nodes.py --model some.onnx [--inputs its_inputs.npz]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import DEFAULT, SHAPES, THREADS, export_lowering, make_case  # noqa: E402 - a sibling file


def profile(path: str, feed: dict[str, np.ndarray], runs: int) -> tuple[float, list[tuple[str, float]]]:
    """Median session run time and median per-node times (ms), after a warm-up by time.

    Returns:
        (run ms, [(node name and op type, ms)]) in graph order.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "profile")
        sess = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        start = time.perf_counter()
        while time.perf_counter() - start < 0.05:
            sess.run(None, feed)
        warm = sess.end_profiling()
        os.remove(warm)
        # A second session so that the profile holds only timed runs.
        sess = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        profile_path = sess.end_profiling()
        with open(profile_path) as f:
            events = json.load(f)
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    order: list[str] = []
    run_times: list[float] = []
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = f"{event['args'].get('op_name', '?'):<12} {event['name'][: -len('_kernel_time')]}"
            if name not in per_node:
                order.append(name)
            per_node[name].append(event["dur"] / 1e3)
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            run_times.append(event["dur"] / 1e3)
    # The first run of the second session is its own warm-up.
    nodes = [(name, statistics.median(per_node[name][1:] or per_node[name])) for name in order]
    return statistics.median(run_times[1:] or run_times), nodes


def print_profile(
    title: str, run_ms: float, nodes: list[tuple[str, float]], min_share: float, by_op: bool
) -> None:
    if by_op:
        per_op: dict[str, float] = collections.defaultdict(float)
        for name, ms in nodes:
            per_op[name.split()[0]] += ms
        nodes = list(per_op.items())
    total = sum(ms for _, ms in nodes)
    print(f"\n{title}: run {run_ms:.2f} ms, nodes {total:.2f} ms")
    rest = 0.0
    for name, ms in sorted(nodes, key=lambda n: -n[1]):
        if ms < min_share * total:
            rest += ms
            continue
        print(f"  {ms:>8.3f} {ms / total:>6.1%}  {name}")
    if rest:
        print(f"  {rest:>8.3f} {rest / total:>6.1%}  (the other nodes)")


def random_feed(path: str) -> dict[str, np.ndarray]:
    import onnxruntime

    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", type=int, nargs="*", help="indices into SHAPES (default: all)")
    parser.add_argument("--lowerings", nargs="*", default=[DEFAULT])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--min-share", type=float, default=0.01)
    parser.add_argument("--model", help="profile this ONNX file instead")
    parser.add_argument("--inputs", help="an .npz of the model's inputs (default: random)")
    parser.add_argument("--by-op", action="store_true", help="sum the nodes of each op type")
    args = parser.parse_args()
    print(f"{THREADS} threads, medians of {args.runs} runs; load average {os.getloadavg()[0]:.1f}")
    if args.model:
        feed = dict(np.load(args.inputs)) if args.inputs else random_feed(args.model)
        run_ms, nodes = profile(args.model, feed, args.runs)
        print_profile(args.model, run_ms, nodes, args.min_share, args.by_op)
        return 0
    shapes = [SHAPES[i] for i in args.shapes] if args.shapes else SHAPES
    for shape in shapes:
        module, inputs = make_case(shape)
        with tempfile.TemporaryDirectory() as folder:
            for lowering in args.lowerings:
                path = os.path.join(folder, f"{lowering}.onnx")
                export_lowering(module, inputs, lowering, path)
                run_ms, nodes = profile(path, inputs, args.runs)
                print_profile(f"{shape} | {lowering}", run_ms, nodes, args.min_share, args.by_op)
    return 0


if __name__ == "__main__":
    sys.exit(main())

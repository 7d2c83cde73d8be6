"""The kernel applied to the sampled columns: a grouped 1x1 product, then the bias.

The GridSample lowerings sample channels-first columns, (B, C, K, Lp); the gather lowerings
channels-last ones, (B, Lp, K, C). Each has its product here, so that the (much larger) columns
are never transposed: the kernel is reordered instead, once, and exporters fold that reorder.
"""

from __future__ import annotations

from typing import Optional

from .emitter import V
from .graph_builder import Dim, Graph
from .params import DeformConvParams


def kernel_times_columns(
    graph: Graph[V], params: DeformConvParams, columns: V, weight: V, positions: Dim[V]
) -> V:
    """The grouped 1x1 product of the kernel with channels-first columns.

    Args:
        columns: (B*og, Cg, K, Lp); its memory order is (B, C, K, Lp) = (B, G, C/G*K, Lp).
        weight: (Cout, C/G, kh, kw).
        positions: Lp, the output positions in ``columns``.

    Returns:
        (B, G, Cout/G, Lp), without bias.
    """
    groups, cout = params.groups, params.out_channels
    reduced = params.channels_per_group * params.taps
    columns = graph.reshape(columns, [graph.size("B"), groups, reduced, positions])  # (B, G, C/G*K, Lp)
    kernel = graph.reshape(weight, [groups, cout // groups, reduced])  # (G, Cout/G, C/G*K)
    return graph.op("MatMul", kernel, columns)  # (B, G, Cout/G, Lp)


def channels_last_kernel(graph: Graph[V], params: DeformConvParams, weight: V) -> V:
    """The kernel as the right operand of channels-last columns.

    Args:
        weight: (Cout, C/G, kh, kw).

    Returns:
        (K*C, Cout) for one group, else (G, K*C/G, Cout/G); rows ordered (K, C/G).
    """
    groups, cout, taps = params.groups, params.out_channels, params.taps
    per_group = params.channels_per_group
    reduced = taps * per_group
    # (Cout, C/G, kh, kw) -> (G, Cout/G, C/G, K) -> (G, K, C/G, Cout/G) -> (G, K*C/G, Cout/G)
    kernel = graph.reshape(weight, [groups, cout // groups, per_group, taps])
    kernel = graph.reshape(
        graph.op("Transpose", kernel, perm=[0, 3, 2, 1]), [groups, reduced, cout // groups]
    )
    return graph.reshape(kernel, [reduced, cout]) if groups == 1 else kernel


def kernel_times_channels_last(
    graph: Graph[V], params: DeformConvParams, samples: V, kernel: V, positions: Dim[V]
) -> V:
    """The grouped product of the kernel with channels-last columns.

    Every Reshape here changes the rank: onnxslim removes a Reshape between two tensors whose
    shapes it knows only by rank (the dynamo exporter's records) as if it did nothing.

    Args:
        samples: (B*Lp*K*og, 1, Cg), memory order (B, Lp, K, C) = (B, Lp, K, G, C/G).
        kernel: :func:`channels_last_kernel`.
        positions: Lp, the output positions in ``samples``.

    Returns:
        (B*Lp, Cout), without bias.
    """
    groups, cout, taps = params.groups, params.out_channels, params.taps
    per_group = params.channels_per_group
    pixels = graph.product(graph.size("B"), positions)
    if groups == 1:
        columns = graph.reshape(samples, [pixels, taps * per_group])  # (B*Lp, K*C)
        return graph.op("MatMul", columns, kernel)  # (B*Lp, Cout)
    # (B*Lp, K, G, C/G) -> (G, B*Lp, K, C/G) -> (G, B*Lp, K*C/G)
    columns = graph.reshape(samples, [pixels, taps, groups, per_group])
    columns = graph.op("Transpose", columns, perm=[2, 0, 1, 3])
    columns = graph.reshape(columns, [groups, pixels, taps * per_group])
    out = graph.op("MatMul", columns, kernel)  # (G, B*Lp, Cout/G)
    out = graph.op("Transpose", out, perm=[1, 0, 2])  # (B*Lp, G, Cout/G)
    return graph.reshape(out, [pixels, cout])


def plus_bias(graph: Graph[V], params: DeformConvParams, out: V, bias: Optional[V]) -> V:
    """out + bias, the bias (Cout,) -> (Cout, 1, 1) to broadcast over (B, Cout, oh, ow)."""
    if bias is None:
        return out
    return graph.op("Add", out, graph.reshape(bias, [params.out_channels, 1, 1]))

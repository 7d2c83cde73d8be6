"""Reading the bilinear samples: GridSample, or a gather of the four corners of every sample.

The gather lowerings read whole channel vectors: the padded input is laid out channels-last as a
table of rows, one per (image, padded pixel, offset group), and each corner of a sample is a row
of it (:func:`.coordinates.corner_rows` computes which). The three gathers differ only in the
operator: Gather from one table of every image's rows (``gather_rows``), GatherND with
batch_dims=1 or GatherElements from each image's own rows (the 1.x package's two choices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Optional

import numpy as np
from onnx import TensorProto

from .emitter import V
from .graph_builder import PAD_AFTER, PAD_BEFORE, Dim, Graph
from .params import DeformConvParams


def grid_sample(graph: Graph[V], image: V, grid: V, mask: Optional[V]) -> V:
    """GridSample's bilinear samples of ``image`` at ``grid``, times the mask.

    Args:
        image: (N, Cs, H, W).
        grid: (N, K, Lp, 2), (x, y) normalised.
        mask: (N, 1, K, Lp) or None.

    Returns:
        (N, Cs, K, Lp).
    """
    # GridSample-20 renamed the mode "bilinear" to "linear".
    mode = "linear" if graph.opset >= 20 else "bilinear"
    columns = graph.op("GridSample", image, grid, mode=mode, padding_mode="zeros", align_corners=0)
    return columns if mask is None else graph.op("Mul", columns, mask)


def grid_sample_each_offset_group(
    graph: Graph[V], params: DeformConvParams, image: V, grid: V, mask: Optional[V]
) -> V:
    """grid_sample_ncnn's sampling: one GridSample per offset group, the columns concatenated.

    Args:
        image: (B, C, H, W).
        grid: (B, og*K, 2, L), (x, y) normalised, positions last.
        mask: (B, og, K, L) or None.

    Returns:
        (B, C, K, L).
    """
    og, cg, taps = params.offset_groups, params.channels_per_offset_group, params.taps
    if og == 1:
        return grid_sample(graph, image, _xy_last(graph, grid), mask)
    # each group's taps are sliced off before (x, y) moves last: onnx2tf 2.6 slices the transposed
    # (B, og*K, L, 2) along the wrong axis
    columns = [
        grid_sample(
            graph,
            graph.slice(image, 1, group * cg, (group + 1) * cg),
            _xy_last(graph, graph.slice(grid, 1, group * taps, (group + 1) * taps)),
            None if mask is None else graph.slice(mask, 1, group, group + 1),
        )
        for group in range(og)
    ]
    return graph.op("Concat", *columns, axis=1)


def _xy_last(graph: Graph[V], grid: V) -> V:
    """(B, K, 2, L) -> (B, K, L, 2), as GridSample reads the grid."""
    return graph.op("Transpose", grid, perm=[0, 1, 3, 2])


#: Reads the four corners of a slice of samples: (graph, params, table, index, positions) ->
#: (B*Lp*K*og, 4, Cg), where index is (B, Lp, K*og, 4) and positions is Lp.
ReadCorners = Callable[[Graph[V], DeformConvParams, V, V, Dim[V]], V]


@dataclass(frozen=True)
class CornerReader(Generic[V]):
    """One gather lowering: the table it reads and how.

    Attributes:
        per_image: whether the table holds each image's rows apart, (B, Hp*Wp*og, Cg), or every
            image's rows in one, (B*Hp*Wp*og, Cg), image b's starting at b*Hp*Wp*og.
        read: the gather.
    """

    per_image: bool
    read: ReadCorners[V]

    def table(self, graph: Graph[V], params: DeformConvParams, input: V) -> V:
        """The padded input as rows of Cg channels, one per (image, padded pixel, offset group).

        Args:
            input: (B, C, H, W).

        Returns:
            (B, Hp*Wp*og, Cg) if :attr:`per_image`, row pixel*og + group holding that pixel's
            channels of that group; else (B*Hp*Wp*og, Cg).
        """
        padded = _zero_padded(graph, params, input)  # (B, C, Hp, Wp)
        channels_last = graph.op("Transpose", padded, perm=[0, 2, 3, 1])  # (B, Hp, Wp, C)
        rows, cg = self.rows_addressed(graph, params), params.channels_per_offset_group
        if self.per_image:
            return graph.reshape(channels_last, [graph.size("B"), rows, cg])
        return graph.reshape(channels_last, [rows, cg])

    def rows_addressed(self, graph: Graph[V], params: DeformConvParams) -> Dim[V]:
        """How many rows an index of this reader addresses: the whole table's, or one image's."""
        per_image = rows_per_image(graph, params)
        return per_image if self.per_image else graph.product(graph.size("B"), per_image)

    def rows_of_each_image(self, graph: Graph[V], params: DeformConvParams, index: V) -> V:
        """``index`` (rows within each image, (B, L, K*og, 4)) as rows of :meth:`table`."""
        if self.per_image or graph.size("B") == 1:
            return index
        return graph.op("Add", index, _first_rows(graph, params))


def _zero_padded(graph: Graph[V], params: DeformConvParams, input: V) -> V:
    """``input`` with PAD_BEFORE rows and columns of zeros before and PAD_AFTER after.

    Zeros concatenated rather than Pad: ONNX's version converter has no adapter from Pad-18
    down, and the dynamo exporter writes opset 18 and converts to a lower opset_version with it.

    Args:
        input: (B, C, H, W).

    Returns:
        (B, C, Hp, Wp).
    """
    batch, channels, width = graph.size("B"), params.in_channels, graph.size("W")
    padded_height = graph.padded(graph.size("H"))

    def zeros(*dims: Dim[V]) -> V:
        return graph.op("Expand", graph.floats(0.0), graph.shape(dims))

    rows = [zeros(batch, channels, PAD_BEFORE, width), input, zeros(batch, channels, PAD_AFTER, width)]
    padded = graph.op("Concat", *rows, axis=2)  # (B, C, Hp, W)
    columns = [zeros(batch, channels, padded_height, PAD_BEFORE), padded]
    return graph.op("Concat", *columns, zeros(batch, channels, padded_height, PAD_AFTER), axis=3)


def rows_per_image(graph: Graph[V], params: DeformConvParams) -> Dim[V]:
    """Hp*Wp*og, the rows of one image in :meth:`CornerReader.table`."""
    return graph.product(graph.padded(graph.size("H")), graph.padded(graph.size("W")), params.offset_groups)


def _first_rows(graph: Graph[V], params: DeformConvParams) -> V:
    """The first row of each image in a single table of rows: b*Hp*Wp*og, as (B, 1, 1, 1)."""
    batch, per_image = graph.size("B"), rows_per_image(graph, params)
    if isinstance(batch, int) and isinstance(per_image, int):
        return graph.indices((np.arange(batch) * per_image).reshape(batch, 1, 1, 1))
    first = graph.op("Mul", graph.batch_indices(), graph.as_index(per_image))  # (B,)
    return graph.reshape(first, [batch, 1, 1, 1])


def _read_by_gather(graph: Graph[V], params: DeformConvParams, table: V, index: V, positions: Dim[V]) -> V:
    """gather_rows: one Gather of whole rows from one table of every image's rows."""
    index = graph.reshape(index, [graph.samples(params, positions), 4])  # (N, 4)
    return graph.op("Gather", table, index, axis=0)  # (N, 4, Cg)


def _read_by_gathernd(graph: Graph[V], params: DeformConvParams, table: V, index: V, positions: Dim[V]) -> V:
    """gathernd: GatherND with batch_dims=1 reads rows of each image."""
    per_image = graph.product(positions, params.taps * params.offset_groups * 4)
    index = graph.reshape(index, [graph.size("B"), per_image, 1])
    if graph.index_dtype != np.int64:  # GatherND's indices are int64 only
        index = graph.op("Cast", index, to=TensorProto.INT64)
    corners = graph.op("GatherND", table, index, batch_dims=1)  # (B, Lp*K*og*4, Cg)
    return graph.reshape(corners, [graph.samples(params, positions), 4, params.channels_per_offset_group])


def _read_by_gatherelements(
    graph: Graph[V], params: DeformConvParams, table: V, index: V, positions: Dim[V]
) -> V:
    """gatherelements: GatherElements of single elements, its row index repeated for every channel."""
    cg = params.channels_per_offset_group
    per_image = graph.product(positions, params.taps * params.offset_groups * 4)
    index = graph.reshape(index, [graph.size("B"), per_image, 1])
    index = graph.op("Expand", index, graph.int64([1, 1, cg]))  # (B, Lp*K*og*4, Cg)
    corners = graph.op("GatherElements", table, index, axis=1)  # (B, Lp*K*og*4, Cg)
    return graph.reshape(corners, [graph.samples(params, positions), 4, cg])


GATHER_ROWS: CornerReader = CornerReader(per_image=False, read=_read_by_gather)
GATHERND: CornerReader = CornerReader(per_image=True, read=_read_by_gathernd)
GATHERELEMENTS: CornerReader = CornerReader(per_image=True, read=_read_by_gatherelements)

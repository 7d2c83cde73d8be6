"""Which lowering writes a call, and the opsets each one needs.

A lowering is one way of writing ``deform_conv2d`` as ONNX operators; the core
(:mod:`.decomposition`) has one function per lowering and this module chooses among them. The
public arguments (``lowering``, and 1.x's ``use_gathernd`` and ``enable_openvino_patch``) are
mapped here, once, for every adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, cast, get_args

from .params import DeformConvExportError

#: How the graph computes the call; see :class:`LoweringOptions`.
Lowering = Literal[
    "auto", "grid_sample", "grid_sample_ncnn", "gather_rows", "gathernd", "gatherelements", "native"
]
LOWERINGS: tuple[Lowering, ...] = get_args(Lowering)
#: The lowerings that write the call as standard operators: all but the choice and DeformConv itself.
DECOMPOSITIONS: tuple[Lowering, ...] = tuple(name for name in LOWERINGS if name not in ("auto", "native"))

#: The lowest opset any decomposition is valid in: every lowering's operators exist from opset 12
#: (GatherND with batch_dims arrived there).
DECOMPOSITION_MIN_OPSET = 12
#: The first opset with GridSample.
GRID_SAMPLE_MIN_OPSET = 16
#: The first opset with the DeformConv operator.
NATIVE_MIN_OPSET = 19
_MIN_OPSET = {
    "grid_sample": GRID_SAMPLE_MIN_OPSET,
    "grid_sample_ncnn": GRID_SAMPLE_MIN_OPSET,
    "native": NATIVE_MIN_OPSET,
}


@dataclass(frozen=True)
class LoweringOptions:
    """How the core computes the call.

    Attributes:
        lowering: ``auto`` (default): ``gather_rows``, at every opset and dtype.
            ``gather_rows``: one Gather reads whole channel vectors from a channels-last copy of
            the input, a MatMul combines the four corners; every absolute position is an
            integer, so the graph stays as precise as half precision allows after an fp16
            conversion or in OpenVINO's bf16/f16 (README, "Precision"). ``gathernd`` and
            ``gatherelements``: the same with GatherND (batch_dims=1) or GatherElements as the
            gather, the 1.x package's two choices. ``grid_sample``: ONNX GridSample samples
            every channel, then one MatMul applies the kernel; its positions are floats, exact
            in float32 but not in half precision at large sizes. ``grid_sample_ncnn``: the
            same for runtimes with neither a batch axis nor comparisons (ncnn, through pnnx):
            one GridSample per offset group, coordinates clamped by Clip. A NaN offset is not
            caught: the outputs that read it are undefined (NaN on ncnn, some pixel on ONNX
            Runtime), as in torchvision's CPU kernel, which reads out of bounds there.
            ``native``: ONNX's DeformConv operator (opset >= 19), no decomposition.
    """

    lowering: Lowering = "auto"

    def min_opset(self) -> int:
        """The lowest opset this lowering can be written in."""
        return _MIN_OPSET.get(self.lowering, DECOMPOSITION_MIN_OPSET)

    def resolve(self, opset: int) -> Lowering:
        """The concrete lowering at ``opset``: ``auto`` is ``gather_rows``.

        Raises:
            DeformConvExportError: the lowering needs a higher opset.
        """
        self.check_opset(opset)
        return "gather_rows" if self.lowering == "auto" else self.lowering

    def check_opset(self, opset: int) -> None:
        """Raise DeformConvExportError, naming ``lowering`` or ``opset_version``, if ``opset`` is too low."""
        needed = self.min_opset()
        if opset >= needed:
            return
        if self.lowering in _MIN_OPSET:
            raise DeformConvExportError(
                f"lowering: {self.lowering!r} needs opset >= {needed}, got opset {opset}; "
                f"choose lowering='auto' or a higher opset_version"
            )
        raise DeformConvExportError(
            f"opset_version: the deform_conv2d decomposition needs opset >= {needed} "
            f"(GatherND with batch_dims), got {opset}"
        )

    @classmethod
    def from_api(
        cls, use_gathernd: Optional[bool], enable_openvino_patch: bool, lowering: str
    ) -> LoweringOptions:
        """Options from the public arguments.

        An explicit ``use_gathernd`` keeps its 1.x meaning: True for ``gathernd``, False for
        ``gatherelements``; with ``lowering="auto"`` it decides. ``enable_openvino_patch`` is
        accepted for 1.x compatibility and changes nothing: the 1.x patch made the shape after
        GatherND explicit for OpenVINO, and every reshape in this graph is explicit.

        Raises:
            DeformConvExportError: an unknown lowering, or one that contradicts ``use_gathernd``.
        """
        if lowering not in LOWERINGS:
            raise DeformConvExportError(
                f"lowering: expected one of {', '.join(map(repr, LOWERINGS))}, got {lowering!r}"
            )
        if use_gathernd is None:
            return cls(cast(Lowering, lowering))
        implied: Lowering = "gathernd" if use_gathernd else "gatherelements"
        if lowering not in ("auto", implied):
            raise DeformConvExportError(
                f"use_gathernd: {use_gathernd} asks for {implied!r}, which contradicts "
                f"lowering={lowering!r}; pass only one of the two"
            )
        return cls(implied)

"""The operator this package translates, ``torchvision::deform_conv2d``, its schema written once.

Both torch exporters call a translation with the operator's arguments in schema order, and both
read the translation's Python signature: the legacy exporter's ``parse_args`` zips it with its
argument descriptors, the dynamo exporter derives the ONNX signature from it (annotated ints and
bools become attributes, unannotated parameters tensor inputs). :func:`with_schema_signature`
gives a translation that signature; :meth:`DeformConv2dCall.bind` reads the arguments back.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, TypeVar

from .emitter import V

SCHEMA = (
    "torchvision::deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, "
    "int offset_groups, bool use_mask) -> Tensor"
)
#: The operator's tensor arguments, then its constant ones with their Python types, in schema order.
TENSOR_ARGUMENTS = ("input", "weight", "offset", "mask", "bias")
CONSTANT_ARGUMENTS: tuple[tuple[str, type], ...] = (
    ("stride_h", int),
    ("stride_w", int),
    ("pad_h", int),
    ("pad_w", int),
    ("dilation_h", int),
    ("dilation_w", int),
    ("groups", int),
    ("offset_groups", int),
    ("use_mask", bool),
)
#: ``parse_args`` descriptors for the legacy exporter: "v" a graph value, "i" an int, "b" a bool.
PARSE_ARGS = ("v",) * len(TENSOR_ARGUMENTS) + tuple("b" if t is bool else "i" for _, t in CONSTANT_ARGUMENTS)

_SIGNATURE = inspect.Signature(
    [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in TENSOR_ARGUMENTS]
    + [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind)
        for name, kind in CONSTANT_ARGUMENTS
    ]
)

F = TypeVar("F", bound=Callable[..., Any])


def with_schema_signature(function: F, *leading: str) -> F:
    """Give ``function(*leading, *args, **kwargs)`` the operator's signature, docstring and annotations.

    Args:
        function: the translation; it receives the operator's arguments by position or name.
        leading: names of parameters before the operator's own (the legacy exporter's ``g``).
    """
    first = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in leading]
    function.__signature__ = _SIGNATURE.replace(  # type: ignore[attr-defined]
        parameters=first + list(_SIGNATURE.parameters.values())
    )
    function.__annotations__ = {name: kind for name, kind in CONSTANT_ARGUMENTS}
    function.__doc__ = SCHEMA
    return function


@dataclass(frozen=True)
class DeformConv2dCall(Generic[V]):
    """One call of the operator: its tensors as graph values, its constant arguments as Python values.

    Attributes:
        input: (B, C, H, W).
        weight: (Cout, C / groups, kh, kw).
        offset: (B, offset_groups * kh * kw * 2, oh, ow).
        mask: (B, offset_groups * kh * kw, oh, ow); a dummy when ``use_mask`` is False.
        bias: (Cout,); zeros when the user gave none.
        constants: ``stride_h`` ... ``use_mask`` by their schema names.
    """

    input: V
    weight: V
    offset: V
    mask: V
    bias: V
    constants: Mapping[str, Any]

    @classmethod
    def bind(cls, *args: Any, **kwargs: Any) -> DeformConv2dCall[Any]:
        """The call from the operator's arguments, given by position or by name in schema order."""
        arguments = _SIGNATURE.bind(*args, **kwargs).arguments
        constants = {name: arguments[name] for name, _ in CONSTANT_ARGUMENTS}
        return cls(**{name: arguments[name] for name in TENSOR_ARGUMENTS}, constants=constants)

    def pair(self, name: str) -> tuple[int, int]:
        """The (h, w) pair ``stride``, ``pad`` or ``dilation``."""
        return self.constants[f"{name}_h"], self.constants[f"{name}_w"]

"""Every use of torch's internals, in one place, with the torch releases each one covers.

Nothing else in the package imports from ``torch.onnx`` beyond its public functions
(``export``, ``register_custom_op_symbolic``, ``unregister_custom_op_symbolic``) or touches
``torch._C``. Each function below runs unchanged on every release the test matrix covers
(torch 2.0.1, 2.2.2, 2.4.1, 2.6.0, 2.9.1, 2.14.1; README "Supported versions"); the
releases beside each branch say where the API exists, which reaches back to 1.13 in places.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

# ``torch.onnx.symbolic_helper.parse_args`` is the documented way to write a custom symbolic.
# torch 1.13 - 2.8: the module itself; torch >= 2.9: a re-export of
# ``torch.onnx._internal.torchscript_exporter.symbolic_helper``.
from torch.onnx import symbolic_helper as _symbolic_helper

#: The legacy exporter's graph value (torch 1.13 - 2.14: ``torch._C.Value``).
Value = torch._C.Value


def parse_args(*descriptors: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator turning a symbolic's constant arguments into Python values ("i" int, "b" bool)."""
    return _symbolic_helper.parse_args(*descriptors)  # type: ignore[arg-type]


def graph_opset(g: Any) -> int:
    """The opset being exported, from the ``GraphContext`` a symbolic receives (torch >= 1.13)."""
    return int(g.opset)


def static_sizes(value: Value) -> Optional[Sequence[Optional[int]]]:
    """The sizes the legacy exporter knows for ``value``, None where a size is unknown.

    torch 1.13 - 2.14: ``torch._C.TensorType.varyingSizes()``; None for a value that is not a
    tensor or whose rank is unknown.
    """
    value_type = value.type()
    if not isinstance(value_type, torch._C.TensorType):
        return None
    return value_type.varyingSizes()


def scalar_type_name(value: Value) -> Optional[str]:
    """The torch scalar type of ``value`` by name ("Float", "Half", ...), None when unknown.

    torch 1.13 - 2.14: ``torch._C.TensorType.scalarType()``.
    """
    value_type = value.type()
    if not isinstance(value_type, torch._C.TensorType):
        return None
    return value_type.scalarType()

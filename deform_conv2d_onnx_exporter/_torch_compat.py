"""Every use of torch's ONNX internals, in one place, with the torch releases each one covers.

Nothing else in the package imports from ``torch.onnx`` beyond its public functions
(``export``, ``register_custom_op_symbolic``, ``unregister_custom_op_symbolic``).
"""

from __future__ import annotations

from typing import Any, Callable

# ``torch.onnx.symbolic_helper.parse_args`` is the documented way to write a custom symbolic.
# torch 1.13 - 2.8: the module itself; torch >= 2.9: a re-export of
# ``torch.onnx._internal.torchscript_exporter.symbolic_helper``.
from torch.onnx import symbolic_helper as _symbolic_helper


def parse_args(*descriptors: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator turning a symbolic's constant arguments into Python values ("i" int, "b" bool)."""
    return _symbolic_helper.parse_args(*descriptors)  # type: ignore[arg-type]


def graph_opset(g: Any) -> int:
    """The opset being exported, from the ``GraphContext`` a symbolic receives (torch >= 1.13)."""
    return int(g.opset)

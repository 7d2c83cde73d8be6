"""Every use of torch's internals, in one place, with the torch releases each one covers.

Nothing else in the package imports from ``torch.onnx`` beyond its public functions
(``export``, ``register_custom_op_symbolic``, ``unregister_custom_op_symbolic``) or touches
``torch._C``; the one change to torch's state beyond those, the dynamo exporter's default
translation (:func:`set_dynamo_default_translation`), is undone by passing None.

Each function below runs unchanged on every release the test matrix covers (torch 2.0.1, 2.2.2,
2.4.1, 2.6.0, 2.9.1, 2.14.1, 2.15.0; README "Supported versions"); the releases beside each branch
say where the API exists, which reaches back to 1.13 in places.
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


#: The dynamo exporter's translations added by :func:`set_dynamo_default_translation`, by the
#: operator's qualified name, each a function of the target opset that returns the translation.
_default_translations: dict[str, Callable[[int], Callable[..., Any]]] = {}
#: ``ONNXRegistry.from_torchlib`` as torch defines it, while ours stands in its place.
_original_from_torchlib: Optional[Any] = None


def set_dynamo_default_translation(
    qualified_name: str, translation_for_opset: Optional[Callable[[int], Callable[..., Any]]]
) -> bool:
    """Make the dynamo exporter translate an operator with ours by default; None undoes it.

    ``torch.onnx.export(dynamo=True)`` builds its table of translations with
    ``torch.onnx._internal.exporter._registration.ONNXRegistry.from_torchlib(opset_version=...)``
    and then adds the entries of ``custom_translation_table``, which take precedence (torch 2.6 -
    2.15). While a translation is set here, ``from_torchlib`` adds it to every table it builds, as
    if it were in ``custom_translation_table``; an entry the caller puts there still wins.

    Args:
        qualified_name: ``"namespace::name"``; the ``default`` overload is translated. An operator
            whose namespace is not loaded when the exporter runs is skipped.
        translation_for_opset: given the opset the exporter's translations target (at least 18),
            the function to translate with; it may raise to refuse that opset.

    Returns:
        False when the installed torch has no such registry (torch < 2.6): nothing was changed.
    """
    global _original_from_torchlib
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:
        return False
    if translation_for_opset is None:
        _default_translations.pop(qualified_name, None)
    else:
        _default_translations[qualified_name] = translation_for_opset
    if _default_translations and _original_from_torchlib is None:
        _original_from_torchlib = ONNXRegistry.__dict__["from_torchlib"]
        ONNXRegistry.from_torchlib = classmethod(_from_torchlib_with_defaults)  # type: ignore[assignment]
    elif not _default_translations and _original_from_torchlib is not None:
        ONNXRegistry.from_torchlib = _original_from_torchlib  # type: ignore[method-assign]
        _original_from_torchlib = None
    return True


def _from_torchlib_with_defaults(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """``ONNXRegistry.from_torchlib`` with the translations of :func:`set_dynamo_default_translation`."""
    assert _original_from_torchlib is not None
    registry = _original_from_torchlib.__func__(cls, *args, **kwargs)
    for qualified_name, translation_for_opset in _default_translations.items():
        namespace, name = qualified_name.split("::")
        packet = getattr(getattr(torch.ops, namespace), name, None)
        if packet is not None:
            registry.register_op(packet.default, translation_for_opset(registry.opset_version))
    return registry


def has_legacy_exporter() -> bool:
    """The installed torch still has the TorchScript exporter (``dynamo=False``): torch <= 2.15.

    Its symbolic registry is the sign: torch 1.13 - 2.15 define ``register_custom_op_symbolic``.
    """
    return hasattr(torch.onnx, "register_custom_op_symbolic")

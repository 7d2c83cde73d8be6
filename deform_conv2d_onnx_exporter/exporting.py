"""``export``: ``torch.onnx.export`` with deform_conv2d handled on whichever exporter is used."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import torch
from onnx import TensorProto

from . import torchscript_adapter, versions
from .lowering import LoweringOptions
from .onnxscript_adapter import translation_function
from .params import DeformConvExportError


def export(
    model: torch.nn.Module,
    args: Any,
    f: str | os.PathLike[str] | Any,
    *,
    dynamo: Optional[bool] = None,
    use_gathernd: Optional[bool] = None,
    enable_openvino_patch: bool = False,
    lowering: str = "auto",
    custom_translation_table: Optional[Mapping[Callable[..., Any], Callable[..., Any]]] = None,
    **kwargs: Any,
) -> Any:
    """Export ``model`` like ``torch.onnx.export``, writing deform_conv2d as standard operators.

    The exporter is the one ``torch.onnx.export`` of the installed torch uses by default (legacy
    before torch 2.9, dynamo from 2.9), unless ``dynamo`` says otherwise. On the legacy path the
    symbolic is registered only for the duration of the call, and any registration made before
    with :func:`register_deform_conv2d_onnx_op` is restored afterwards.

    Args:
        model: the module to export; it is not modified.
        args: example inputs, as for ``torch.onnx.export``.
        f: the file path (or file object) to write.
        dynamo: True for the dynamo exporter (torch >= 2.6), False for the legacy one,
            None for the installed torch's default.
        use_gathernd, enable_openvino_patch, lowering: how deform_conv2d is written, as for
            :func:`create_deform_conv2d_custom_op` (README, "Options").
        custom_translation_table: more translations for the dynamo exporter; it must not
            translate deform_conv2d itself.
        **kwargs: passed to ``torch.onnx.export`` (``opset_version``, ``input_names``,
            ``dynamic_axes`` or ``dynamic_shapes``, ...).

    Returns:
        What ``torch.onnx.export`` returns (an ``ONNXProgram`` on the dynamo path).

    Raises:
        ValueError: ``dynamo=True`` on a torch without ``custom_translation_table``, or a
            ``custom_translation_table`` that already translates deform_conv2d.
        DeformConvExportError: a deform_conv2d call that cannot be exported correctly, or
            ``lowering="native"`` on a legacy exporter that cannot write opset 19 (torch < 2.2),
            or a float16 model on the CPU where torch has no CPU float16 matmul (torch < 2.1).
    """
    capabilities = versions.installed()
    exporter = capabilities.choose_exporter(dynamo)
    options = LoweringOptions.from_api(use_gathernd, enable_openvino_patch, lowering)
    leftover = _new_file_guard(f)
    try:
        if exporter == "dynamo":
            # The translation function cannot see the target opset: check the lowering here.
            options.resolve(kwargs.get("opset_version") or capabilities.dynamo_default_opset,
                            TensorProto.FLOAT)
            table = _translation_table(custom_translation_table, options)
            return torch.onnx.export(
                model, args, f, dynamo=True, custom_translation_table=table, **kwargs
            )
        if custom_translation_table:
            raise ValueError(
                "custom_translation_table: expected None on the legacy exporter (dynamo=False), "
                f"got a table of {len(custom_translation_table)} entries"
            )
        torchscript_adapter.check_legacy_lowering(options, capabilities)
        if not capabilities.cpu_float16_matmul and _has_cpu_float16(model, args):
            raise DeformConvExportError(
                f"float16: the legacy exporter runs the model to trace it, and torchvision's CPU "
                f"kernel needs a float16 matmul, which torch {capabilities.version} does not have "
                f"(torch >= {versions.CPU_FLOAT16_MATMUL} has); export a float32 copy of the model"
            )
        if capabilities.has_dynamo_keyword:
            kwargs["dynamo"] = False
        previous = torchscript_adapter.registered_options()
        torchscript_adapter.register(options)
        try:
            return torch.onnx.export(model, args, f, **kwargs)
        finally:
            torchscript_adapter.register(previous)
    except BaseException as error:
        leftover()
        # torch wraps an error raised while translating in two or three layers of its own;
        # surface ours, which names the argument, what was expected and what was got.
        ours = _our_error(error)
        if ours is not None and ours is not error:
            raise ours from error
        raise


def _has_cpu_float16(model: torch.nn.Module, args: Any) -> bool:
    """The model's parameters or the example inputs hold a float16 tensor on the CPU."""
    pending = [args, *model.parameters(), *model.buffers()]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            if item.dtype == torch.float16 and item.device.type == "cpu":
                return True
        elif isinstance(item, (tuple, list)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return False


def _our_error(error: BaseException) -> Optional[DeformConvExportError]:
    """The DeformConvExportError in the chain of causes of ``error``, if any."""
    seen: set[int] = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        if isinstance(current, DeformConvExportError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _translation_table(
    extra: Optional[Mapping[Callable[..., Any], Callable[..., Any]]], options: LoweringOptions
) -> dict[Callable[..., Any], Callable[..., Any]]:
    target = torch.ops.torchvision.deform_conv2d.default
    table = dict(extra or {})
    if target in table:
        raise ValueError(
            "custom_translation_table: expected no entry for torchvision::deform_conv2d "
            "(export adds its own; use torch.onnx.export to supply yours), got one"
        )
    table[target] = translation_function(options)
    return table


def _new_file_guard(f: Any) -> Callable[[], None]:
    """A function that deletes ``f`` if it is a path that did not exist before the export."""
    if not isinstance(f, (str, os.PathLike)) or os.path.exists(f):
        return lambda: None

    def remove() -> None:
        if os.path.exists(f):
            os.remove(f)

    return remove

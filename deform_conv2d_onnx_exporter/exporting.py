"""``export``: ``torch.onnx.export`` with deform_conv2d handled on whichever exporter is used."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch

from . import _torch_compat, torchscript_adapter, versions
from .lowering import LoweringOptions
from .onnxscript_adapter import translation_function
from .params import DeformConvExportError
from .torchscript_adapter import DeformConvWarning

TranslationTable = Mapping[Callable[..., Any], Callable[..., Any]]

_log = logging.getLogger(__name__)
#: The logger a user sets to DEBUG to see what the fallback held back (its parent).
_PACKAGE_LOGGER = __name__.rpartition(".")[0]

#: Terminal colour codes (``ESC[96m``) in torch's error messages.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def export(
    model: torch.nn.Module,
    args: Any,
    f: str | os.PathLike[str] | Any,
    *,
    dynamo: Optional[bool] = None,
    use_gathernd: Optional[bool] = None,
    enable_openvino_patch: bool = False,
    lowering: str = "auto",
    custom_translation_table: Optional[TranslationTable] = None,
    no_grad: bool = True,
    **kwargs: Any,
) -> Any:
    """Export ``model`` like ``torch.onnx.export``, writing deform_conv2d as standard operators.

    The exporter is the one ``torch.onnx.export`` of the installed torch uses by default (legacy
    before torch 2.9, dynamo from 2.9), unless ``dynamo`` says otherwise. When the default dynamo
    exporter fails for a reason other than deform_conv2d (``torch.export`` refuses much Python
    control flow), the export is retried with the legacy exporter, with one warning line (torch's
    output from the failed attempt is logged at DEBUG by this module's logger). On the legacy
    path the symbolic is registered only for the duration of the call, and any registration made
    before with :func:`register_deform_conv2d_onnx_op` is restored afterwards. A failed export
    leaves no file behind.

    Args:
        model: the module to export; it is not modified.
        args: example inputs, as for ``torch.onnx.export``.
        f: the file path (or file object) to write.
        dynamo: True for the dynamo exporter only (torch >= 2.6), False for the legacy one,
            None for the installed torch's default, with the legacy exporter as fallback.
        use_gathernd, enable_openvino_patch, lowering: how deform_conv2d is written, as for
            :func:`create_deform_conv2d_custom_op` (README, "Options").
        custom_translation_table: more translations for the dynamo exporter; it must not
            translate deform_conv2d itself. With one, there is no fallback.
        no_grad: export under ``torch.no_grad()`` (default): torch's decompositions of some
            operators (attention, for one) fail to trace with autograd enabled.
        **kwargs: passed to ``torch.onnx.export`` (``opset_version``, ``input_names``,
            ``dynamic_shapes`` or ``dynamic_axes``, ...). ``dynamic_shapes`` given to the legacy
            exporter is passed as the ``dynamic_axes`` it means.

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
    request = _Request(model, args, f, options, capabilities, kwargs)
    grad_mode = torch.no_grad() if no_grad else contextlib.nullcontext()
    with _our_error_lifted(), _no_partial_files(f) as remove_partial_files, grad_mode:
        return _export_on(
            exporter, request, custom_translation_table, fallback=dynamo is None, cleanup=remove_partial_files
        )


def _export_on(
    exporter: str,
    request: _Request,
    custom_translation_table: Optional[TranslationTable],
    *,
    fallback: bool,
    cleanup: Callable[[], None],
) -> Any:
    """The export on ``exporter`` ("dynamo" or "legacy"); only the dynamo exporter reads a
    ``custom_translation_table``. ``fallback`` and ``cleanup``: see :func:`_export_dynamo_or_legacy`."""
    if exporter == "dynamo":
        return _export_dynamo_or_legacy(
            request, custom_translation_table, fallback=fallback, before_fallback=cleanup
        )
    if custom_translation_table:
        raise ValueError(
            "custom_translation_table: expected None on the legacy exporter (dynamo=False), "
            f"got a table of {len(custom_translation_table)} entries"
        )
    return _export_legacy(request)


@dataclass(frozen=True)
class _Request:
    """One call of :func:`export`: what each exporter step reads."""

    model: torch.nn.Module
    args: Any
    f: Any
    options: LoweringOptions
    capabilities: versions.TorchCapabilities
    #: the keyword arguments for ``torch.onnx.export``, as the user gave them
    kwargs: dict[str, Any]


def _export_dynamo_or_legacy(
    request: _Request,
    custom_translation_table: Optional[TranslationTable],
    *,
    fallback: bool,
    before_fallback: Callable[[], None],
) -> Any:
    """The dynamo exporter; if ``fallback`` and it fails for a reason not ours, the legacy one.

    No fallback with a ``custom_translation_table`` (the legacy exporter cannot use it), for our
    own errors (the legacy exporter would refuse the same call), or on a torch without a legacy
    exporter. ``before_fallback`` deletes what the failed export wrote. If the legacy exporter
    fails too, its error is raised, with the dynamo exporter's as its context.

    Where a fallback can happen, what torch prints while the dynamo exporter runs is held back:
    shown as it was when the export succeeds or fails without a fallback, logged at DEBUG when the
    legacy exporter takes over (a failed ``torch.export`` prints dozens of lines of graph dumps,
    which the user did not ask for and need not read). So are the legacy exporter's TracerWarnings.
    """
    if not fallback or custom_translation_table or not _torch_compat.has_legacy_exporter():
        return _export_dynamo(request, custom_translation_table)
    dynamo_output = _HeldBack()
    try:
        with dynamo_output.holding():
            result = _export_dynamo(request, None)
    except Exception as error:
        if _our_error(error) is not None:
            dynamo_output.show()
            raise
        _log.debug("the dynamo exporter failed; its output:\n%s", dynamo_output.text(), exc_info=error)
        before_fallback()
        result = _export_legacy_holding_tracer_warnings(request)
        warnings.warn(
            f"export: the dynamo exporter failed ({_summary(error)}); exported with the legacy exporter "
            f"instead, whose trace keeps the branches the example input takes. dynamo=True raises the "
            f"dynamo exporter's error; torch's output is logged at DEBUG (logger {_PACKAGE_LOGGER!r})",
            DeformConvWarning,
            stacklevel=_stacklevel_of_the_caller(),
        )
        return result
    dynamo_output.show()
    return result


def _stacklevel_of_the_caller() -> int:
    """The ``stacklevel`` that makes a warning given by the calling function name the first line
    outside this module: the user's call of :func:`export`, however deep the call was made."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _export_legacy_holding_tracer_warnings(request: _Request) -> Any:
    """:func:`_export_legacy`, its TracerWarnings logged at DEBUG; other warnings pass as usual.

    A model the dynamo exporter refused usually branches on its data, and the legacy tracer gives
    a TracerWarning at each such branch (and at torchvision's own checks): the fallback's one
    warning line says what they mean for the model.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return _export_legacy(request)
    finally:
        # outside the recording, where the warnings given again reach the user
        for warning in caught:
            if issubclass(warning.category, torch.jit.TracerWarning):
                _log.debug("the legacy exporter's %s", _formatted(warning))
            else:
                _warn_again(warning)


class _HeldBack:
    """What a block writes to ``sys.stdout`` and ``sys.stderr``, and the warnings it gives, kept.

    torch prints through ``print``, ``logging`` and ``warnings``, all of which go to
    ``sys.stdout``/``sys.stderr`` when they write; replacing those (not file descriptors 1 and 2)
    also works in notebooks, whose streams are not those descriptors.
    """

    def __init__(self) -> None:
        self._stdout = io.StringIO()
        self._stderr = io.StringIO()
        self._warnings: list[warnings.WarningMessage] = []

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        with contextlib.redirect_stdout(self._stdout), contextlib.redirect_stderr(self._stderr):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    yield
                finally:
                    self._warnings = list(caught)

    def show(self) -> None:
        """Write it out as if it had not been held back (warnings through the filters in force)."""
        sys.stdout.write(self._stdout.getvalue())
        sys.stderr.write(self._stderr.getvalue())
        for warning in self._warnings:
            _warn_again(warning)

    def text(self) -> str:
        """All of it, for the log: stdout, stderr, then the warnings."""
        parts = [self._stdout.getvalue(), self._stderr.getvalue(), *map(_formatted, self._warnings)]
        return "".join(parts)


def _warn_again(warning: warnings.WarningMessage) -> None:
    """Give a recorded warning again, from where it was first given."""
    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _formatted(warning: warnings.WarningMessage) -> str:
    return warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno)


def _export_dynamo(request: _Request, custom_translation_table: Optional[TranslationTable]) -> Any:
    """``torch.onnx.export(dynamo=True)`` with our translation added to the user's table."""
    r = request
    # The translation function cannot see the target opset: check the lowering here.
    r.options.check_opset(r.kwargs.get("opset_version") or r.capabilities.dynamo_default_opset)
    table = _translation_table(custom_translation_table, r.options)
    return torch.onnx.export(r.model, r.args, r.f, dynamo=True, custom_translation_table=table, **r.kwargs)


def _export_legacy(request: _Request) -> Any:
    """``torch.onnx.export`` on the legacy exporter, with our symbolic registered for the call.

    ``dynamic_shapes`` in the request becomes the ``dynamic_axes`` it means.
    """
    model, args, options, capabilities = request.model, request.args, request.options, request.capabilities
    kwargs = _legacy_kwargs(model, args, request.kwargs)
    torchscript_adapter.check_legacy_lowering(options, capabilities)
    if not capabilities.cpu_float16_matmul and _has_cpu_float16(model, args):
        raise DeformConvExportError(
            f"float16: the legacy exporter runs the model to trace it, and torchvision's CPU "
            f"kernel needs a float16 matmul, which torch {capabilities.version} does not have "
            f"(torch >= {versions.CPU_FLOAT16_MATMUL} has); export a float32 copy of the model"
        )
    if capabilities.has_dynamo_keyword:
        kwargs = {**kwargs, "dynamo": False}
    previous = torchscript_adapter.registered_options()
    torchscript_adapter.register(options)
    try:
        return torch.onnx.export(model, args, request.f, **kwargs)
    finally:
        torchscript_adapter.register(previous)


def _summary(error: BaseException) -> str:
    """The error's type and the first line of its first cause's message, fit for one warning line.

    torch wraps ``torch.export``'s error (which names what failed: "Could not guard on
    data-dependent expression ...") in one of its own whose first line is generic and colours its
    text with terminal escape codes; these are dropped.
    """
    root, seen = error, {id(error)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    lines = _ANSI_ESCAPE.sub("", str(root)).strip().splitlines()
    line = " ".join(lines[0].split()) if lines else ""
    line = f"{line[:160]}..." if len(line) > 160 else line
    caused = f", from {type(root).__name__}" if root is not error else ""
    return f"{type(error).__name__}{caused}: {line}"


def _legacy_kwargs(model: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for the legacy exporter: ``dynamic_shapes`` becomes ``dynamic_axes``.

    ``dynamic_shapes`` names inputs by position (a tuple) or by ``forward``'s parameter names (a
    dict); ``dynamic_axes`` by graph input names, which are set to ``input_names`` or, when not
    given, ``forward``'s parameter names. Dimension names are those of the ``Dim`` objects.

    Raises:
        ValueError: a ``dynamic_shapes`` entry that is not a dict or a sequence of axes.
    """
    shapes = kwargs.get("dynamic_shapes")
    kwargs = {key: value for key, value in kwargs.items() if key != "dynamic_shapes"}
    if shapes is None or kwargs.get("dynamic_axes"):
        return kwargs
    parameters = list(inspect.signature(model.forward).parameters)
    count = len(args) if isinstance(args, (tuple, list)) else 1
    names = list(kwargs.get("input_names") or parameters[:count])
    by_position = shapes.items() if isinstance(shapes, dict) else enumerate(shapes)
    axes: dict[str, dict[int, str]] = {}
    for key, spec in by_position:
        position = parameters.index(key) if isinstance(key, str) else key
        if spec is None or position >= len(names):
            continue
        if not isinstance(spec, (dict, list, tuple)):
            raise ValueError(
                f"dynamic_shapes: expected a dict or a sequence of axes for input {key!r}, got {spec!r}"
            )
        items = spec.items() if isinstance(spec, dict) else enumerate(spec)
        name = names[position]
        axes[name] = {int(axis): _dim_name(dim, name, int(axis)) for axis, dim in items if dim is not None}
    return {**kwargs, "input_names": names, "dynamic_axes": axes}


def _dim_name(dim: Any, input_name: str, axis: int) -> str:
    """The name of a ``dynamic_shapes`` dimension: a ``Dim``'s own, a string, or a made-up one."""
    if isinstance(dim, str):
        return dim
    return getattr(dim, "__name__", None) or f"{input_name}_dim{axis}"


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


@contextlib.contextmanager
def _our_error_lifted() -> Iterator[None]:
    """Raise our DeformConvExportError from under the errors torch wraps it in."""
    try:
        yield
    except BaseException as error:
        # torch wraps an error raised while translating in two or three layers of its own;
        # surface ours, which names the argument, what was expected and what was got.
        ours = _our_error(error)
        if ours is not None and ours is not error:
            raise ours from error
        raise


@contextlib.contextmanager
def _no_partial_files(f: Any) -> Iterator[Callable[[], None]]:
    """Deletes what the export wrote when it fails: ``f`` and the dynamo exporter's ``f.data``.

    Only files that did not exist before; yields the function that deletes them, for a retry.
    """
    paths = [] if not isinstance(f, (str, os.PathLike)) else [os.fspath(f), os.fspath(f) + ".data"]
    new = [path for path in paths if not os.path.exists(path)]

    def remove() -> None:
        for path in new:
            if os.path.exists(path):
                os.remove(path)

    try:
        yield remove
    except BaseException:
        remove()
        raise

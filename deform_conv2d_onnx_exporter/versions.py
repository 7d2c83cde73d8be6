"""What the installed torch (and ONNX Runtime) can export with or run, decided from version numbers.

The releases in brackets are the ones the test matrix runs on Python 3.11 wheels (``nox -s tests
matrix``, README "Supported versions"), where every column is checked against the installed torch.
The 1.13.1 and 2.8.0 rows come from one earlier measurement that the matrix does not repeat. The
releases between are assumed to behave like the measured one above them (2.1 like 2.0: not
measured).

==============  ======================  ===============  ==================  ===================
torch           legacy default / max    ``dynamo=``      custom_translation  ``export`` default
                opset                   keyword          _table
==============  ======================  ===============  ==================  ===================
1.13            14 / 17                 no               no                  legacy (unsupported)
2.0 – 2.1       14 / 18  [2.0.1]        no               no                  legacy
2.2 – 2.3       17 / 19  [2.2.2]        no               no                  legacy
2.4 – 2.5       17 / 20  [2.4.1]        yes              no                  legacy
2.6 – 2.7       17 / 20  [2.6.0]        yes              yes                 legacy
2.8             18 / 20                 yes              yes                 legacy
>= 2.9          20 / 23  [2.9.1 2.14.1  yes              yes                 dynamo
                2.15.0]
==============  ======================  ===============  ==================  ===================

The highest opset is the highest ``opset_version`` the legacy exporter accepts; from torch 2.9 it
accepts 21 – 23 and writes them with its opset-20 translations. The dynamo exporter writes opset 18
by default before torch 2.9, and 20 from 2.9.
ONNX Runtime runs the ONNX ``DeformConv`` operator (``lowering="native"``) from 1.25.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from packaging.version import Version

Exporter = Literal["legacy", "dynamo"]

#: The oldest torch this package supports (torchvision 0.15): older ones have no torchvision
#: with Python 3.11 wheels to test on.
OLDEST_TORCH = Version("2.0")
#: First torch whose ``torch.onnx.export`` takes the ``dynamo`` keyword.
DYNAMO_KEYWORD = Version("2.4")
#: First torch whose dynamo exporter takes ``custom_translation_table``.
DYNAMO_TRANSLATION_TABLE = Version("2.6")
#: First torch whose ``torch.onnx.export`` defaults to ``dynamo=True``.
DYNAMO_BY_DEFAULT = Version("2.9")
#: First torch whose dynamo exporter keeps a dimension dynamic all through the model when its
#: example size is 1 (measured: 2.6.0 fixes it to 1 at the input; 2.9.1 keeps the input dynamic
#: but can fix it inside the model, after F.interpolate; 2.14.1 and 2.15.0 keep it in the test
#: suite's models, though 2.14.1 still fixed it on a model with a Swin backbone (issue 12);
#: 2.10 - 2.13 not measured).
DYNAMO_SIZE_ONE_DYNAMIC = Version("2.14")
#: First torch whose dynamo exporter keeps sizes symbolic through shape arithmetic such as
#: F.interpolate (measured: 2.6.0 fixes them to the example's, 2.9.1 keeps them).
DYNAMO_SYMBOLIC_SIZES = Version("2.9")
#: The legacy exporter's (default opset, highest opset), from the first release that has them.
_LEGACY_OPSETS = [
    (Version("2.9"), (20, 23)),
    (Version("2.8"), (18, 20)),
    (Version("2.4"), (17, 20)),
    (Version("2.2"), (17, 19)),
    (Version("2.0"), (14, 18)),
    (Version("0"), (14, 17)),
]
#: First torch with a CPU float16 matmul (torch's release notes; measured: 2.0.1 has none, 2.4.1
#: has it). torchvision's CPU kernel uses it, and the legacy exporter runs the model to trace it.
CPU_FLOAT16_MATMUL = Version("2.1")
#: First ONNX Runtime that runs the ONNX DeformConv operator (CPU: float and double).
ONNXRUNTIME_DEFORMCONV = Version("1.25")


#: What a plain ``pip install deform_conv2d_onnx_exporter`` leaves out, and the extra
#: (pyproject.toml) that installs it: the exporters' packages, and ONNX Runtime for ``verify``.
EXTRA_OF_PACKAGE = {"torch": "torch", "torchvision": "torch", "onnxscript": "torch", "onnxruntime": "ort"}
TORCH_EXTRA = "deform_conv2d_onnx_exporter[torch]"


def missing_extra_message(what: str, error: ModuleNotFoundError) -> Optional[str]:
    """One line saying which extra ``what`` needs, if ``error`` is a package an extra installs.

    None when ``error`` is about another module (a real bug, to be raised as it is).
    """
    package = (error.name or "").split(".")[0]
    if package not in EXTRA_OF_PACKAGE:
        return None
    extra = f"deform_conv2d_onnx_exporter[{EXTRA_OF_PACKAGE[package]}]"
    return f"{what} needs {package}, which is not installed: pip install '{extra}'"


def _release(version: str) -> Version:
    """``version`` without local or dev tags: ``"2.6.0+cpu"`` -> 2.6.0."""
    return Version(Version(version).base_version)


@dataclass(frozen=True)
class TorchCapabilities:
    """The export paths of one torch release.

    Attributes:
        version: the release, without local tags such as ``+cpu``.
        has_dynamo_keyword: ``torch.onnx.export`` takes ``dynamo=``.
        has_dynamo_translation: the dynamo exporter accepts ``custom_translation_table``.
        dynamo_by_default: ``torch.onnx.export`` uses the dynamo exporter unless told otherwise
            (the same releases raised the dynamo exporter's default opset from 18 to 20).
        legacy_default_opset: the opset the legacy exporter writes when not told.
        legacy_max_opset: the highest ``opset_version`` the legacy exporter accepts.
        dynamo_keeps_size_one_dynamic: the dynamo exporter keeps a dimension marked dynamic in
            ``dynamic_shapes`` dynamic when its example size is 1 (older releases may fix it to 1).
        dynamo_symbolic_sizes: the dynamo exporter keeps sizes symbolic through shape arithmetic
            such as ``F.interpolate`` (older releases fix them to the example's).
        cpu_float16_matmul: float16 matrix products run on the CPU, as torchvision's float16
            deform_conv2d kernel needs (and so does tracing a float16 model for the legacy exporter).
    """

    version: Version
    has_dynamo_keyword: bool
    has_dynamo_translation: bool
    dynamo_by_default: bool
    legacy_default_opset: int
    legacy_max_opset: int
    cpu_float16_matmul: bool
    dynamo_keeps_size_one_dynamic: bool
    dynamo_symbolic_sizes: bool

    @property
    def dynamo_default_opset(self) -> int:
        """The opset the dynamo exporter writes when ``opset_version`` is not given."""
        return 20 if self.dynamo_by_default else 18

    @property
    def supported(self) -> bool:
        """This package supports (and tests) the release."""
        return self.version >= OLDEST_TORCH

    def exporters(self) -> list[Exporter]:
        """The exporters this package can use with this release."""
        return ["legacy", "dynamo"] if self.has_dynamo_translation else ["legacy"]

    def default_exporter(self) -> Exporter:
        """The exporter ``torch.onnx.export`` of this release uses when ``dynamo`` is not given."""
        return "dynamo" if self.dynamo_by_default else "legacy"

    def choose_exporter(self, dynamo: Optional[bool]) -> Exporter:
        """The exporter to use for an explicit ``dynamo`` flag, or this release's default for None.

        Raises:
            ValueError: ``dynamo=True`` on a release without ``custom_translation_table``.
        """
        if dynamo is None:
            return self.default_exporter()
        if dynamo and not self.has_dynamo_translation:
            raise ValueError(
                f"dynamo: expected False on torch {self.version} (its dynamo exporter has no "
                f"custom_translation_table; that needs torch >= {DYNAMO_TRANSLATION_TABLE}), got True"
            )
        return "dynamo" if dynamo else "legacy"


def capabilities(torch_version: str) -> TorchCapabilities:
    """Capabilities of the torch release named by ``torch_version`` (e.g. ``"2.6.0+cpu"``)."""
    release = _release(torch_version)
    default_opset, max_opset = next(opsets for first, opsets in _LEGACY_OPSETS if release >= first)
    return TorchCapabilities(
        version=release,
        has_dynamo_keyword=release >= DYNAMO_KEYWORD,
        has_dynamo_translation=release >= DYNAMO_TRANSLATION_TABLE,
        dynamo_by_default=release >= DYNAMO_BY_DEFAULT,
        legacy_default_opset=default_opset,
        legacy_max_opset=max_opset,
        cpu_float16_matmul=release >= CPU_FLOAT16_MATMUL,
        dynamo_keeps_size_one_dynamic=release >= DYNAMO_SIZE_ONE_DYNAMIC,
        dynamo_symbolic_sizes=release >= DYNAMO_SYMBOLIC_SIZES,
    )


def installed() -> TorchCapabilities:
    """Capabilities of the torch installed in this environment."""
    import torch

    return capabilities(torch.__version__)


#: First onnxscript whose torch_lib translates torchvision::deform_conv2d itself, to ONNX DeformConv
#: (what torch.onnx.export(dynamo=True) writes without our translation).
ONNXSCRIPT_DEFORMCONV = Version("0.7.1")


def onnxscript_translates_deform_conv2d(onnxscript_version: str) -> bool:
    """onnxscript of this version maps torchvision::deform_conv2d to ONNX DeformConv by itself."""
    return _release(onnxscript_version) >= ONNXSCRIPT_DEFORMCONV


def onnxruntime_has_deformconv(onnxruntime_version: str) -> bool:
    """ONNX Runtime of this version runs the ONNX DeformConv operator (``lowering="native"``)."""
    return _release(onnxruntime_version) >= ONNXRUNTIME_DEFORMCONV

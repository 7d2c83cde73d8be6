"""What the installed torch can export with, decided from its version number alone.

Measured on Python 3.11 wheels (see README, "Supported versions"):

==========  ================================  =========================  =====================
torch       legacy exporter (``dynamo=False``) ``custom_translation_table``  ``export`` default
==========  ================================  =========================  =====================
< 2.6       yes                               no                          legacy
2.6 – 2.8   yes                               yes                         legacy
>= 2.9      yes                               yes                         dynamo
==========  ================================  =========================  =====================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from packaging.version import Version

Exporter = Literal["legacy", "dynamo"]

#: First torch whose dynamo exporter takes ``custom_translation_table``.
DYNAMO_TRANSLATION_TABLE = Version("2.6")
#: First torch whose ``torch.onnx.export`` defaults to ``dynamo=True``.
DYNAMO_BY_DEFAULT = Version("2.9")


@dataclass(frozen=True)
class TorchCapabilities:
    """The export paths of one torch release.

    Attributes:
        version: the release, without local tags such as ``+cpu``.
        has_dynamo_translation: the dynamo exporter accepts ``custom_translation_table``.
        dynamo_by_default: ``torch.onnx.export`` uses the dynamo exporter unless told otherwise
            (the same releases raised the dynamo exporter's default opset from 18 to 20).
    """

    version: Version
    has_dynamo_translation: bool
    dynamo_by_default: bool

    @property
    def dynamo_default_opset(self) -> int:
        """The opset the dynamo exporter writes when ``opset_version`` is not given."""
        return 20 if self.dynamo_by_default else 18

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
    release = Version(Version(torch_version).base_version)
    return TorchCapabilities(
        version=release,
        has_dynamo_translation=release >= DYNAMO_TRANSLATION_TABLE,
        dynamo_by_default=release >= DYNAMO_BY_DEFAULT,
    )


def installed() -> TorchCapabilities:
    """Capabilities of the torch installed in this environment."""
    import torch

    return capabilities(torch.__version__)

"""The package as it is published: its namespace and the metadata in pyproject.toml. No torch.

``nox -s build`` builds the wheel and sdist, checks them, and installs the wheel on each Python
version these tests find claimed.
"""

from __future__ import annotations

import re
import tomllib
import types
from pathlib import Path

import deform_conv2d_onnx_exporter as dce

PROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def test_namespace_holds_the_public_api_only() -> None:
    names = {name for name in vars(dce) if not name.startswith("_")}
    # submodules become attributes of their package when imported
    names -= {name for name in names if isinstance(getattr(dce, name), types.ModuleType)}
    assert names <= set(dce.__all__), names - set(dce.__all__)
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib"} & set(vars(dce))
    # the names that need torch are listed before their first use imports them
    assert dir(dce) == sorted([*dce.__all__, "__version__"])


def test_requires_python_is_the_oldest_of_the_claimed_versions() -> None:
    claimed = [
        int(match.group(1))
        for classifier in PROJECT["classifiers"]
        if (match := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", classifier))
    ]
    assert claimed == list(range(claimed[0], claimed[-1] + 1)), "a gap in the claimed versions"
    assert PROJECT["requires-python"] == f">=3.{claimed[0]}"


def test_extras_pull_no_test_runner() -> None:
    # nox creates the test environments; installed into one, it is several MB of nothing
    extras = PROJECT["optional-dependencies"]
    assert not [requirement for requirement in extras["test"] if requirement.startswith("nox")]

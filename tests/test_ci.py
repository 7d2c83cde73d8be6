"""``.ci/run``, the CI entry point: README's test command, and system changes only in CI.

It runs here with a stand-in for nox that reports its arguments and environment, so nothing is
installed and no session runs.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Prints nox's arguments, then the opt-in the toolchain session reads.
_STAND_IN = """#!/usr/bin/env bash
printf '%s\\n' "$@"
echo "DCE_ALLOW_APT=${DCE_ALLOW_APT:-}"
echo "DCE_NOX_ENVDIR=${DCE_NOX_ENVDIR:-}"
"""


def _run_ci(tmp_path: Path, **env: str) -> list[str]:
    """The lines the stand-in nox printed when ``.ci/run`` called it with ``env`` added."""
    nox = tmp_path / "tools" / "bin" / "nox"
    nox.parent.mkdir(parents=True)
    nox.write_text(_STAND_IN)
    nox.chmod(nox.stat().st_mode | stat.S_IXUSR)
    clean = {key: value for key, value in os.environ.items() if key not in ("CI", "DCE_ALLOW_APT")}
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")],
        env={**clean, "DCE_CACHE": str(tmp_path), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


@pytest.mark.parametrize(("ci", "allowed"), [("true", "1"), (None, "")])
def test_apt_get_is_allowed_only_in_ci(tmp_path: Path, ci: str | None, allowed: str) -> None:
    lines = _run_ci(tmp_path, **({"CI": ci} if ci else {}))
    assert f"DCE_ALLOW_APT={allowed}" in lines
    assert f"DCE_NOX_ENVDIR={tmp_path / 'nox'}" in lines


def test_ci_runs_the_sessions_readme_names(tmp_path: Path) -> None:
    arguments = _run_ci(tmp_path)[:-2]
    (command,) = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("nox ")]
    assert arguments == shlex.split(command)[1:]
    assert f"`{command}`" in (ROOT / "README.md").read_text()

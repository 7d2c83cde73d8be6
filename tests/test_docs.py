"""Every code block of the documents runs as written, and the outputs they show match a rerun.

A block's info string (the words after the opening fence) says what it is:

- ``python``, ``bash``: run, in the order of the document, in one new folder per document, so that
  a block may read a file an earlier one wrote, as a reader following the document would. Each
  python block runs in a new interpreter: it imports and defines everything it uses. A block must
  write nothing to stderr, so that a warning a reader would see is explained or gone; a block whose
  info string says ``stderr: <why>`` may.
- ``text output``: what the block above it printed on stdout. Numbers written with an exponent
  (errors) and version numbers are compared as placeholders; everything else, counts included,
  must be equal.
- ``<language> skip: <why>``: not run, for the reason the reader sees in the Markdown source.

Any other block (no info string, or a language not listed) fails the test: each says what it is.

The outputs were recorded with the newest torch of the test matrix, whose dynamo exporter is the
default and writes ONNX DeformConv; on other releases the documents' examples are deselected.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "RELEASING.md", *(ROOT / "docs").glob("*.md")]
)
#: The documents a user reads to install the package (RELEASING.md installs from TestPyPI on purpose).
USER_DOCUMENTS = [path for path in DOCUMENTS if path.name not in ("CHANGELOG.md", "RELEASING.md")]
#: Opening or closing fence, with the info string; blocks may be indented (inside a list item).
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>.*)$")
RUNNABLE = ("python", "bash")
#: Seconds a block may take: the slowest, the demo, takes about 10 s.
TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    """One fenced code block: its info string, its text and the line its fence opens on."""

    info: str
    code: str
    line: int

    @property
    def language(self) -> str:
        return self.info.split(" ", 1)[0] if self.info else ""

    def reason(self, key: str) -> Optional[str]:
        """The text after ``key:`` in the info string (``skip: needs pnnx``), or None."""
        match = re.search(rf"\b{key}:\s*(.*)", self.info)
        return match.group(1).strip() if match else None


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    found: list[Block] = []
    opened: Optional[tuple[str, int, int]] = None  # info, first line, indent
    lines: list[str] = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        match = FENCE.match(text)
        if opened is None and match:
            opened, lines = (match.group("info").strip(), number, len(match.group("indent"))), []
        elif opened is not None and match and not match.group("info").strip():
            info, first, indent = opened
            found.append(Block(info, "\n".join(line[indent:] for line in lines) + "\n", first))
            opened = None
        elif opened is not None:
            lines.append(text)
    assert opened is None, f"{path.name}: the block opened on line {opened[1]} is not closed"
    return found


def _masked(text: str) -> str:
    """``text`` with errors and version numbers as placeholders, and runs of spaces as one."""
    text = re.sub(r"\d+\.\d+(\.\d+)+(\+\w+)?", "<version>", text)
    text = re.sub(r"\d+(\.\d+)?e[-+]\d+", "<number>", text)
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


def _run(block: Block, folder: Path) -> str:
    """Run a python or bash block in ``folder``; returns its stdout; fails on an error or on stderr."""
    interpreter = [sys.executable] if block.language == "python" else ["bash", "-e"]
    command = [*interpreter, "-c", block.code]
    # the command line of the environment the tests run in, as an installed package puts it on PATH
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    done = subprocess.run(
        command, cwd=folder, capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "PATH": path}
    )
    where = f"the {block.language} block on line {block.line}"
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
    if block.reason("stderr") is None:
        assert done.stderr == "", f"{where} wrote to stderr (say why in its info string):\n{done.stderr}"
    return done.stdout


@pytest.mark.dynamo_default
@pytest.mark.torch_writes_deformconv
@pytest.mark.parametrize("path", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_code_blocks_run_and_outputs_match(path: Path, tmp_path: Path) -> None:
    output: Optional[str] = None  # what the last block run printed
    for block in blocks(path):
        where = f"{path.name}, line {block.line}"
        if block.reason("skip") is not None:
            assert block.reason("skip"), f"{where}: a block that is not run says why"
            output = None
        elif block.language in RUNNABLE:
            output = _run(block, tmp_path)
        elif block.info.startswith("text output"):
            assert output is not None, f"{where}: an output block follows no block that ran"
            assert _masked(output) == _masked(block.code), f"{where}: the output of a rerun differs"
            output = None
        else:
            pytest.fail(f"{where}: info string {block.info!r} says neither how to run the block nor why not")


def test_every_fence_is_read() -> None:
    """The extractor finds as many blocks as the documents have fences (two each)."""
    for path in DOCUMENTS:
        fences = sum(1 for line in path.read_text().splitlines() if FENCE.match(line))
        assert 2 * len(blocks(path)) == fences, path.name


def test_install_lines_install_this_package() -> None:
    """The package index has 1.x only: a ``pip install`` of the package names a path, not the index."""
    from_the_clone = 0
    for path in USER_DOCUMENTS:
        for block in blocks(path):
            for command in block.code.split("&&") if block.language == "bash" else []:
                if "pip install" not in command:
                    continue
                words = shlex.split(command.split("pip install", 1)[1], comments=True)
                names = [word for word in words if not word.startswith("-")]
                from_the_index = [
                    name
                    for name in names
                    if "deform_conv2d_onnx_exporter" in name and not name.startswith(("./", "dist/", "/"))
                ]
                assert not from_the_index, f"{path.name}, line {block.line}: {command.strip()}"
                from_the_clone += any(name.startswith(".") for name in names)
    assert from_the_clone, "no install line installs from the clone"

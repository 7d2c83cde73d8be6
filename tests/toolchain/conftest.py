"""Fixtures of the deployment-tool tests: the exported variants, the batch tools' results, the table.

The table (tool x variant: the largest relative error over the sizes checked, or the failure) is
printed after the tests and written to ``$DCE_TOOLCHAIN_TABLE`` when set (the nox session sets it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest
from _pytest.terminal import TerminalReporter
from models import VARIANTS, Variant, build_model, export_all, make_input

from tools import TOOLS, BatchTool, Job, Tool, version


@pytest.fixture(scope="session")
def network() -> object:
    return build_model()


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every variant, exported once per session: variant name -> ONNX file."""
    return export_all(str(tmp_path_factory.mktemp("exported")))


def tool_inputs(tool: Tool, variant: Variant) -> list[np.ndarray]:
    """The inputs ``tool`` is checked on: the export size, and others for a dynamic variant."""
    sizes = variant.sizes()[:1] if tool.fixed_shapes else variant.sizes(large=tool.large_size)
    return [make_input(size) for size in sizes]


@pytest.fixture(scope="session")
def batch_results(exported: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> object:
    """A function: batch tool -> its results for every variant, computed on first use."""
    cache: dict[str, dict[Job, np.ndarray | str] | BaseException] = {}

    def results(tool: BatchTool) -> dict[Job, np.ndarray | str]:
        if tool.name not in cache:
            assert tool.batch is not None
            jobs = [
                (variant, exported[variant.name], tool_inputs(tool, variant))
                for variant in VARIANTS
                if tool.takes(variant)
            ]
            try:
                cache[tool.name] = tool.batch(jobs, str(tmp_path_factory.mktemp(tool.name)))
            except Exception as error:  # every test of the tool reports the same failure
                cache[tool.name] = error
        found = cache[tool.name]
        if isinstance(found, BaseException):
            raise found
        return found

    return results


@dataclass
class Table:
    """Cells of the tool x variant table, and the failure messages they point to."""

    cells: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def figure(self, tool: Tool, variant: Variant, errors: list[float], verdict: str) -> None:
        figures = " / ".join(f"{e:.1e}" for e in errors)
        self.cells[tool.name, variant.name] = figures if verdict == "ok" else f"{verdict} {figures}"

    def failure(self, tool: Tool, variant: Variant, message: str, verdict: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
        self.cells[tool.name, variant.name] = f"{verdict} [{self.notes.index(message) + 1}]"

    def markdown(self) -> str:
        variants = [v.name for v in VARIANTS]
        lines = ["| tool (version) | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        for tool in TOOLS:
            row = [self.cells.get((tool.name, v.name), "not run" if tool.takes(v) else "-") for v in VARIANTS]
            lines.append(f"| {tool.name} ({version(tool)}) | " + " | ".join(row) + " |")
        lines.append("")
        lines.append(
            "Cells: max |out - torchvision| / max |torchvision| at the export size "
            "(/ at another size, dynamic variants); 'documented' = a pinned upstream failure "
            "the test asserts; [n] = the message below; - = not among the tool's variants."
        )
        lines.extend(f"{i}. {message}" for i, message in enumerate(self.notes, 1))
        return "\n".join(lines) + "\n"


_TABLE = pytest.StashKey[Table]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_TABLE] = Table()


@pytest.fixture
def table(request: pytest.FixtureRequest) -> Table:
    return request.config.stash[_TABLE]


def pytest_terminal_summary(
    terminalreporter: TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    table = config.stash[_TABLE]
    if not table.cells:
        return
    text = table.markdown()
    terminalreporter.write_sep("=", "deployment tools x exported variants")
    terminalreporter.write(text)
    destination = os.environ.get("DCE_TOOLCHAIN_TABLE")
    if destination:
        with open(destination, "w") as file:
            file.write(text)
        terminalreporter.write_line(f"table written to {destination}")

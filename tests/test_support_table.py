"""README's support table comes from the matrix's results; they must agree with version detection.

``python tools/support_table.py --check`` (run by .ci/run after the sessions) compares the table
with the results; this test compares the recorded row of the installed torch with what
``deform_conv2d_onnx_exporter.versions`` detects here. A torch with no recorded row yet (its first
session writes one) deselects the test, and the session's summary says so.
"""

from __future__ import annotations

import pytest
from paths import capabilities, recorded_result


@pytest.mark.recorded_results
def test_recorded_capabilities_are_those_of_the_installed_torch() -> None:
    """The table's row for this torch says what versions.installed() detects here and now."""
    recorded = recorded_result()
    assert recorded is not None
    assert recorded["capabilities"] == capabilities()

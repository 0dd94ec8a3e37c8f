"""Shared by every test: the reliability table at the end of a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from .ledger import LEDGER


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if LEDGER.empty:
        return
    table = LEDGER.table()
    terminalreporter.write_sep("=", "reliability")
    terminalreporter.write_line(table)
    reports = Path(__file__).resolve().parent.parent / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "reliability.txt").write_text(table + "\n")


@pytest.fixture
def reachable(tmp_path):
    """tmp_path, and pytest's folders above it, opened to passing (not listing), as a folder of backups must be
    for QEMU's user to read one during an instant restore."""
    for above in [tmp_path, *tmp_path.parents]:
        if str(above).startswith(str(tmp_path.parent.parent)):
            above.chmod(above.stat().st_mode | 0o011)
    return tmp_path

"""Shared by every test: the reliability table at the end of a run."""

from __future__ import annotations

from pathlib import Path

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

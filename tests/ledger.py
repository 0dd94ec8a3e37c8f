"""The reliability ledger: what the suite tried and how it ended, for the table printed at the end of a run.

Tests record an outcome *before* they assert it, so a failing case is counted
as a failure, not lost.  The table is printed by ``tests/conftest.py`` and
written to ``reports/reliability.txt``; the README quotes it from a real run.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Ledger:
    faults: list[tuple[str, bool]] = field(default_factory=list)
    bad_inputs: list[tuple[str, bool]] = field(default_factory=list)
    key_sightings: list[str] = field(default_factory=list)
    key_samples: int = 0
    restores: list[tuple[str, bool]] = field(default_factory=list)
    decoys: list[tuple[str, bool]] = field(default_factory=list)

    def fault(self, name: str, survived: bool) -> bool:
        self.faults.append((name, survived))
        return survived

    def bad_input(self, case: str, rejected_cleanly: bool) -> bool:
        self.bad_inputs.append((case, rejected_cleanly))
        return rejected_cleanly

    def restore(self, what: str, identical: bool) -> bool:
        self.restores.append((what, identical))
        return identical

    def decoy(self, name: str, untouched: bool) -> bool:
        self.decoys.append((name, untouched))
        return untouched

    @property
    def empty(self) -> bool:
        return not (self.faults or self.bad_inputs or self.key_samples or self.restores or self.decoys)

    def table(self) -> str:
        def ratio(rows):
            return f"{sum(ok for _, ok in rows)} of {len(rows)}"

        lines = [
            ("faults survived", ratio(self.faults)),
            ("bad inputs rejected cleanly (one line, non-zero, nothing changed)", ratio(self.bad_inputs)),
            (f"key sightings ({self.key_samples} samples of every process, outputs, logs)",
             str(len(self.key_sightings))),
            ("backup -> restore mismatches", f"{sum(not ok for _, ok in self.restores)} of {len(self.restores)}"),
            ("decoys touched", f"{sum(not ok for _, ok in self.decoys)} of {len(self.decoys)}"),
        ]
        width = max(len(name) for name, _ in lines)
        out = [f"{'reliability':<{width}}  result", f"{'-' * width}  {'-' * 12}"]
        out += [f"{name:<{width}}  {value}" for name, value in lines]
        failed = [f"  {kind}: {name}" for kind, rows in (("fault", self.faults), ("bad input", self.bad_inputs),
                                                          ("restore", self.restores), ("decoy", self.decoys))
                  for name, ok in rows if not ok]
        if failed or self.key_sightings:
            out.append("not as it should be:")
            out += failed + [f"  key seen: {where}" for where in self.key_sightings]
        return "\n".join(out)


LEDGER = Ledger()

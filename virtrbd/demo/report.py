"""The demo's report: one row per step with its time, result and the figures it measured."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    ok: bool = False
    detail: str = ""
    figures: dict[str, float | int | str] = field(default_factory=dict)


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    def table(self) -> str:
        width = max(len(s.name) for s in self.steps)
        rule = f"{'-' * width}  {'-' * 8}  {'-' * 6}  {'-' * 40}"
        lines = [f"{'step':<{width}}  {'time':>8}  {'result':<6}  details", rule]
        for s in self.steps:
            lines.append(f"{s.name:<{width}}  {s.seconds:>7.2f}s  {'OK' if s.ok else 'FAILED':<6}  {s.detail}")
        lines.append(rule)
        verdict = "every step OK" if self.ok else f"{sum(not s.ok for s in self.steps)} step(s) FAILED"
        lines.append(f"{'total':<{width}}  {self.seconds:>7.2f}s  {'OK' if self.ok else 'FAILED':<6}  {verdict}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "seconds": round(self.seconds, 3),
                           "steps": [asdict(s) for s in self.steps]}, indent=2)

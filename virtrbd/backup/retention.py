"""Which backups a retention policy keeps: the options of Proxmox Backup Server, and the chains they need.

Decided from the catalog alone (no file is touched here): per image, newest
first, by the point's time in local time (an operator's "daily" is their day).
Each option keeps the newest backup of each of its last N periods that hold a
backup, not counting periods where an earlier option already kept one, and it
only looks at backups no earlier option kept.  Then every link of a kept
backup's chain is kept, with the reason "needed by".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, tzinfo

from ..errors import UsageError
from .catalog import OK, Entry
from .formats.manifest import parse_time

#: the options in the order they are applied, and the period each one counts in
PERIODS: dict[str, Callable[[datetime], str] | None] = {
    "last": None,
    "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: f"{t.isocalendar()[0]:04d}-W{t.isocalendar()[1]:02d}",
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for option in fields(self):
            value = getattr(self, option.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"--keep-{option.name} {value!r}: a whole number >= 0")
        if not any(getattr(self, option.name) for option in fields(self)):
            raise UsageError("a policy keeps something: give at least one --keep-… option above 0")


@dataclass(frozen=True)
class Decision:
    file: str
    image: str | None
    time: str | None
    keep: bool
    reason: str                # "keep-daily 2026-12-05", "needed by FILE", "not kept by the policy", …


def decide(entries: list[Entry], policy: Policy, zone: tzinfo | None = None) -> list[Decision]:
    """A decision for every backup of ``entries``: the whole ones judged, the others left alone (kept)."""
    decisions = []
    images = sorted({e.image for e in entries if e.status == OK and e.image})
    for image in images:
        decisions += _decide_image([e for e in entries if e.status == OK and e.image == image], policy, zone)
    decisions += [Decision(e.file, e.image, e.time, True, f"left alone: {e.status}")
                  for e in entries if e.status != OK and e.image is not None]
    return decisions


def _decide_image(backups: list[Entry], policy: Policy, zone: tzinfo | None) -> list[Decision]:
    newest_first = sorted(backups, key=lambda e: (_local(e, zone), len(e.chain)), reverse=True)
    reasons: dict[str, str] = {}
    for option, period in PERIODS.items():
        count = getattr(policy, option)
        if not count:
            continue
        def key(e: Entry, period=period) -> str:
            return e.file if period is None else period(_local(e, zone))

        covered = {key(e) for e in newest_first if e.file in reasons}
        chosen: set[str] = set()
        for e in newest_first:
            if e.file in reasons or key(e) in covered or key(e) in chosen:
                continue
            if len(chosen) >= count:
                break
            chosen.add(key(e))
            reasons[e.file] = f"keep-{option}" + ("" if period is None else f" {key(e)}")
    by_file = {e.file: e for e in backups}
    for file in list(reasons):
        for link in by_file[file].chain[:-1]:
            reasons.setdefault(link, f"needed by {file}")
    return [Decision(e.file, e.image, e.time, e.file in reasons, reasons.get(e.file, "not kept by the policy"))
            for e in newest_first]


def _local(entry: Entry, zone: tzinfo | None) -> datetime:
    moment = parse_time(entry.time or "")
    if moment is None:                       # a loaded manifest's times were checked: this cannot happen
        raise ValueError(f"{entry.file}: no time to judge it by")
    return moment.astimezone(zone)

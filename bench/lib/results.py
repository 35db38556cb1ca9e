"""The measurements: flat rows of (section, case, registry, metric, value),
saved as JSON so the report can be rendered again without measuring."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    section: str
    case: str
    registry: str
    metric: str
    value: float
    run: int = 0


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def add(self, section: str, case: str, registry: str, metric: str, value: float,
            run: int = 0) -> None:
        self.rows.append(Row(section, case, registry, metric, float(value), run))

    def note(self, section: str, text: str) -> None:
        """A line the report prints under the section's table."""
        if text not in self.notes.setdefault(section, []):
            self.notes[section].append(text)

    def values(self, section: str, case: str, registry: str, metric: str) -> list[float]:
        return [r.value for r in self.rows if (r.section, r.case, r.registry, r.metric)
                == (section, case, registry, metric)]

    def median(self, section: str, case: str, registry: str, metric: str) -> float | None:
        vals = self.values(section, case, registry, metric)
        return statistics.median(vals) if vals else None

    def maximum(self, section: str, case: str, registry: str, metric: str) -> float | None:
        vals = self.values(section, case, registry, metric)
        return max(vals) if vals else None

    def keys(self, section: str) -> list[tuple[str, str, str]]:
        """(case, registry, metric) of a section, in the order first measured."""
        seen: dict[tuple[str, str, str], None] = {}
        for r in self.rows:
            if r.section == section:
                seen.setdefault((r.case, r.registry, r.metric), None)
        return list(seen)

    def cases(self, section: str) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.keys(section)))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({'rows': [asdict(r) for r in self.rows], 'notes': self.notes,
                                    'meta': self.meta}, indent=1))

    @classmethod
    def load(cls, path: Path) -> 'Results':
        doc = json.loads(path.read_text())
        return cls([Row(**r) for r in doc['rows']], doc.get('notes', {}), doc.get('meta', {}))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b

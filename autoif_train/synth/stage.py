"""What a synthesis stage returns for one chunk (or its `finalize`): kept rows and the counts of what it dropped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class StageResult:
    """Rows kept, drops by reason (units removed), details (sample-level counters) and candidate count."""

    rows: list[dict]
    drops: Counter = field(default_factory=Counter)
    details: Counter = field(default_factory=Counter)
    candidates: int | None = None

    def __post_init__(self):
        if self.candidates is None:
            self.candidates = len(self.rows) + sum(self.drops.values())

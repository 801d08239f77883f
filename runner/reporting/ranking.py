"""An honest ranking: rank ranges and tie groups from the Holm-corrected paired tests of runner/reporting/compare.py.

Two runs are told apart only where their paired test is significant; a run's rank is then a range, from 1 plus the
runs significantly above it to the number of runs minus those significantly below it (a pair that could not be
compared tells nothing apart). Tie groups are a compact letter display over the runs in score order: runs sharing
a letter are not told apart by any test between them. Higher scores rank first.
"""

from __future__ import annotations

import string
from dataclasses import dataclass


@dataclass
class Rank:
    run_id: str
    label: str
    score: float
    best: int  # the highest rank the tests allow (1 is first)
    worst: int
    groups: str  # tie-group letters: runs sharing one are not told apart

    @property
    def rank(self) -> str:
        return str(self.best) if self.best == self.worst else f"{self.best}–{self.worst}"


def rank_runs(runs: list[tuple[str, str, float]], wins: set[tuple[str, str]]) -> list[Rank]:
    """`runs`: (run_id, label, score); `wins`: (winner, loser) run ids of the significant pairs."""
    ordered = sorted(runs, key=lambda r: -r[2])
    n = len(ordered)
    ranks = []
    for run_id, label, score in ordered:
        above = sum(1 for other, _, _ in ordered if (other, run_id) in wins)
        below = sum(1 for other, _, _ in ordered if (run_id, other) in wins)
        ranks.append(Rank(run_id, label, score, 1 + above, n - below, ""))
    for letter, (start, end) in zip(_letters(), _tie_spans([r.run_id for r in ranks], wins), strict=False):
        for rank in ranks[start : end + 1]:
            rank.groups += letter
    return ranks


def _tie_spans(ids: list[str], wins: set[tuple[str, str]]) -> list[tuple[int, int]]:
    """The maximal runs of consecutive ids (in score order) that no significant pair separates."""
    apart = {frozenset(pair) for pair in wins}
    spans: list[tuple[int, int]] = []
    for start in range(len(ids)):
        end = start
        while end + 1 < len(ids) and all(frozenset((ids[k], ids[end + 1])) not in apart for k in range(start, end + 1)):
            end += 1
        if not spans or end > spans[-1][1]:
            spans.append((start, end))
    return spans


def _letters() -> list[str]:
    single = list(string.ascii_lowercase)
    return single + [a + b for a in single for b in single]

"""Multiple-choice requests grouped by what they share, so an engine computes it once.

lm-eval sends one log-likelihood request per choice: MMLU's four choices are four (context, continuation)
pairs with the same context, and continuations that differ only in their last token (`A` .. `D`, after a
`\\n` the chat template moved there). One forward pass over the context and the shared part of the
continuation scores the whole group: the distribution at its last position gives every choice's last token.
This is lm-eval's own transformers model's rule (`group_by="contexts"`: requests with equal context +
continuation[:-1] share one pass). Other choices (ARC's, several words each) are groups of one, kept next to
the doc's other choices so an engine with a prefix cache computes the context once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Request = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


@dataclass(frozen=True)
class ContextGroup:
    """Requests (indices into the caller's list) with equal `context` and equal continuations but for their
    last token; `prefix` is that shared part of the continuation (often empty). The pass reads
    `context + prefix`; each member's continuation is `prefix + [its last token]`."""

    context: list[int]
    prefix: list[int]
    members: list[int]

    @property
    def prompt(self) -> list[int]:
        return self.context + self.prefix

    def last_tokens(self, requests: Sequence[Request]) -> list[int]:
        """The distinct last tokens the pass reads at its final position, in first-seen order."""
        return list(dict.fromkeys(requests[i][1][-1] for i in self.members))

    def alone(self) -> list[ContextGroup]:
        """Each member in a group of its own (a choice the engine refused then fails alone)."""
        return [ContextGroup(self.context, self.prefix, [i]) for i in self.members]


def group_by_context(requests: Sequence[Request], max_last_tokens: int | None = None) -> list[ContextGroup]:
    """Groups in the order their requests first appear; members in request order; a doc's groups adjacent
    (groups with one context follow each other), so a prefix cache holds that context for all of them.

    `max_last_tokens` caps the distinct last tokens one pass may read (vLLM reads at most 128): a larger
    group is split into passes of that many tokens' requests.
    """
    by_key: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for index, (context, continuation) in enumerate(requests):
        by_key.setdefault((tuple(context), tuple(continuation[:-1])), []).append(index)
    context_seen: dict[tuple[int, ...], int] = {}  # where each context first appears
    for key, members in by_key.items():
        context_seen.setdefault(key[0], members[0])
    keys = sorted(by_key, key=lambda key: (context_seen[key[0]], by_key[key][0]))
    groups: list[ContextGroup] = []
    for key in keys:
        context, prefix = requests[by_key[key][0]][0], list(key[1])
        for part in _split(requests, by_key[key], max_last_tokens):
            groups.append(ContextGroup(context, prefix, part))
    return groups


def _split(requests: Sequence[Request], members: list[int], cap: int | None) -> list[list[int]]:
    """Consecutive runs of members whose distinct last tokens number at most `cap`."""
    if cap is None:
        return [members]
    parts: list[list[int]] = [[]]
    seen: set[int] = set()
    for index in members:
        token = requests[index][1][-1]
        if token not in seen and len(seen) == cap:
            parts.append([])
            seen = set()
        seen.add(token)
        parts[-1].append(index)
    return parts

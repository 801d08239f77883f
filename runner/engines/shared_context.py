"""Multiple-choice requests grouped by what they share, so an engine computes it once.

lm-eval sends one log-likelihood request per choice: MMLU's four choices are four (context, continuation)
pairs with the same context, and continuations that differ only in their last token (`A` .. `D`, after a
`\\n` the chat template moved there). Two ways to share the work, one per engine:

- groups (`group_by_context`, the transformers engine): lm-eval's own rule for its `hf` model
  (`group_by="contexts"`: requests with equal context + continuation[:-1] share one pass). One forward pass
  over the context and the shared part of the continuation gives every position's distribution, so it
  scores the whole group. Other choices (ARC's, several words each) are groups of one.
- positions (`by_position`, vLLM): each point a continuation passes through (the context, then each of its
  tokens but the last) is one request that reads, at the one position it samples, the next token of every
  choice passing through it. vLLM can read any tokens' log-probabilities at that position
  (`logprob_token_ids`), but earlier positions only as `prompt_logprobs`, a [tokens, vocabulary] block
  over every prompt token it computes; positions need none. A doc's positions are adjacent, so vLLM's
  prefix cache computes its context once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    def alone(self) -> list[ContextGroup]:
        """Each member in a group of its own (a choice the engine refused then fails alone)."""
        return [ContextGroup(self.context, self.prefix, [i]) for i in self.members]


def group_by_context(requests: Sequence[Request]) -> list[ContextGroup]:
    """Groups in the order their requests first appear; members in request order; a doc's groups adjacent
    (groups with one context follow each other)."""
    by_key: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for index, (context, continuation) in enumerate(requests):
        by_key.setdefault((tuple(context), tuple(continuation[:-1])), []).append(index)
    context_seen: dict[tuple[int, ...], int] = {}  # where each context first appears
    for key, members in by_key.items():
        context_seen.setdefault(key[0], members[0])
    keys = sorted(by_key, key=lambda key: (context_seen[key[0]], by_key[key][0]))
    return [ContextGroup(requests[by_key[key][0]][0], list(key[1]), by_key[key]) for key in keys]


def _split(members: list[int], token: Callable[[int], int], cap: int | None) -> list[list[int]]:
    """Consecutive runs of members whose distinct tokens (`token(member)`) number at most `cap`."""
    if cap is None:
        return [members]
    parts: list[list[int]] = [[]]
    seen: set[int] = set()
    for index in members:
        read = token(index)
        if read not in seen and len(seen) == cap:
            parts.append([])
            seen = set()
        seen.add(read)
        parts[-1].append(index)
    return parts


@dataclass(frozen=True)
class Position:
    """A point that some requests' continuations pass through: after `context` and the first len(`path`) tokens
    of their continuations. One engine pass over `context + path` gives, at its last position, the probability
    of each member's next token there and the token greedy decoding picks; nothing earlier is read, so the pass
    needs no probability over its prompt's other positions."""

    context: list[int]
    path: list[int]
    members: list[int]

    @property
    def prompt(self) -> list[int]:
        return self.context + self.path

    def next_tokens(self, requests: Sequence[Request]) -> list[int]:
        """The distinct tokens the pass reads (each member's continuation token here), in first-seen order."""
        depth = len(self.path)
        return list(dict.fromkeys(requests[i][1][depth] for i in self.members))


def by_position(
    requests: Sequence[Request], max_tokens: int | None = None, alone: Sequence[int] | None = None
) -> list[Position]:
    """Every position some request's continuation passes through: a request of n continuation tokens is read
    at n positions, and requests with equal context and equal first tokens share theirs. A doc's positions
    are adjacent, shorter paths first, so a prefix cache computes the context once and each position only
    what follows the last cached block.

    `max_tokens` caps the distinct tokens one pass may read (vLLM reads at most 128); `alone` scores those
    requests only, each with positions of its own (a choice the engine refused then fails alone).
    """
    contexts: dict[tuple[int, ...], int] = {}  # each distinct context's first request, which names it
    by_key: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for index in range(len(requests)) if alone is None else alone:
        context, continuation = requests[index]
        owner = index if alone is not None else contexts.setdefault(tuple(context), index)
        for depth in range(len(continuation)):
            by_key.setdefault((owner, tuple(continuation[:depth])), []).append(index)
    positions: list[Position] = []
    for owner, path in sorted(by_key, key=lambda key: (key[0], len(key[1]), by_key[key][0])):
        members = by_key[(owner, path)]
        depth = len(path)
        for part in _split(members, lambda i: requests[i][1][depth], max_tokens):  # noqa: B023 - used at once
            positions.append(Position(requests[owner][0], list(path), part))
    return positions

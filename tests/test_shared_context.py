"""Multiple-choice requests grouped by what they share (runner/engines/shared_context.py): which requests an
engine scores in one pass, and in what order it sends the passes. Groups (the transformers engine: a row per
group) and positions (vLLM: a request per position a continuation passes through)."""

from __future__ import annotations

from runner.engines.shared_context import by_position, group_by_context

# MMLU through a chat template: the context ends at the assistant's turn, each continuation is "\n" + a letter.
NL = 198
MMLU = [([1, 2, 3], [NL, 10]), ([1, 2, 3], [NL, 11]), ([1, 2, 3], [NL, 12]), ([1, 2, 3], [NL, 13])]
ARC = [([4, 5], [NL, 20, 21]), ([4, 5], [NL, 22]), ([4, 5], [NL, 23, 24, 25])]  # choices of several tokens


def test_choices_differing_in_their_last_token_are_one_pass_over_context_and_shared_prefix():
    groups = group_by_context(MMLU + ARC)
    assert [(g.context, g.prefix, g.members) for g in groups] == [
        ([1, 2, 3], [NL], [0, 1, 2, 3]),  # MMLU: one pass over the context and "\n" reads A, B, C and D
        ([4, 5], [NL, 20], [4]),  # ARC: each choice its own pass, a doc's passes next to each other
        ([4, 5], [NL], [5]),
        ([4, 5], [NL, 23, 24], [6]),
    ]
    assert groups[0].prompt == [1, 2, 3, NL]


def test_a_context_seen_again_later_joins_its_doc_and_one_token_choices_have_no_prefix():
    requests = [ARC[0], ([7], [30]), ARC[1], ([7], [31])]
    groups = group_by_context(requests)
    assert [(g.prefix, g.members) for g in groups] == [([NL, 20], [0]), ([NL], [2]), ([], [1, 3])]


def test_a_group_splits_into_one_group_per_member():
    requests = [([7], [t]) for t in (1, 2, 1, 3, 4, 5)]
    (whole,) = group_by_context(requests)
    assert [g.members for g in whole.alone()] == [[i] for i in range(len(requests))]


def test_each_position_a_continuation_passes_through_is_one_pass_shared_by_the_choices_passing_through_it():
    positions = by_position(MMLU + ARC)
    assert [(p.context, p.path, p.members) for p in positions] == [
        ([1, 2, 3], [], [0, 1, 2, 3]),  # MMLU: after the context, every choice reads "\n"
        ([1, 2, 3], [NL], [0, 1, 2, 3]),  # after "\n", the four letters
        ([4, 5], [], [4, 5, 6]),  # ARC: a doc's positions together, shorter paths first
        ([4, 5], [NL], [4, 5, 6]),  # the first words of all three choices
        ([4, 5], [NL, 20], [4]),
        ([4, 5], [NL, 23], [6]),
        ([4, 5], [NL, 23, 24], [6]),
    ]
    assert positions[1].prompt == [1, 2, 3, NL] and positions[1].next_tokens(MMLU) == [10, 11, 12, 13]
    assert positions[3].next_tokens(MMLU + ARC) == [20, 22, 23]
    # Every request is read once at each of its tokens: a score is the sum over len(continuation) positions.
    reads = sorted((i, len(p.path)) for p in positions for i in p.members)
    assert reads == sorted((i, d) for i, (_, c) in enumerate(MMLU + ARC) for d in range(len(c)))


def test_positions_alone_are_a_requests_own_and_a_cap_splits_the_tokens_read():
    requests = MMLU + ARC
    alone = by_position(requests, alone=[1, 6])
    assert [(p.path, p.members) for p in alone] == [
        ([], [1]), ([NL], [1]), ([], [6]), ([NL], [6]), ([NL, 23], [6]), ([NL, 23, 24], [6]),
    ]  # fmt: skip
    capped = by_position(requests, max_tokens=2)
    assert [p.members for p in capped[:3]] == [[0, 1, 2, 3], [0, 1], [2, 3]]
    assert all(len(p.next_tokens(requests)) <= 2 for p in capped)
    # A context seen again later joins its doc's positions.
    later = by_position([ARC[1], ([7], [30]), ARC[0]])
    assert [(p.context, p.path, p.members) for p in later] == [
        ([4, 5], [], [0, 2]), ([4, 5], [NL], [0, 2]), ([4, 5], [NL, 20], [2]), ([7], [], [1]),
    ]  # fmt: skip

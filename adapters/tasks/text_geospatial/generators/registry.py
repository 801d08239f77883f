"""The subtype registry: `@subtype("name")` registers a generator of one kind of item."""

import random
from collections.abc import Callable
from typing import Any

from .cities import CityPool

# A subtype generator receives its own RNG, the task's shared city pool and a
# count, and returns item dicts holding at least "prompt" and "answer" (unless
# the task's `finish` adds them) plus whatever fields scoring.py and f1_scoring.py
# need to score.
SubtypeGenerator = Callable[[random.Random, CityPool, int], list[dict[str, Any]]]
SUBTYPES: dict[str, SubtypeGenerator] = {}


def subtype(name: str) -> Callable[[SubtypeGenerator], SubtypeGenerator]:
    def register(fn: SubtypeGenerator) -> SubtypeGenerator:
        if name in SUBTYPES:
            raise ValueError(f"duplicate subtype {name!r}")
        SUBTYPES[name] = fn
        return fn

    return register

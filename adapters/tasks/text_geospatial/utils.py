"""Loading, answer parsing and scoring for the text_geospatial lm-eval tasks.

lm-eval imports this file by path (``!function utils.xxx``), so it must stay
self-contained: standard library only at import time, data located relative
to this file. ``datasets`` is imported lazily inside the loader because lm-eval
wants a DatasetDict and always has ``datasets`` installed. lm-eval executes the
file afresh for every ``!function`` reference, so importing it must stay cheap.

Sections: loading; reply clean-up and JSON extraction; value parsing (degrees,
DMS, numbers with units, labels, names); one scoring section per task; the
corpus-level micro aggregations used by the YAML files.
"""

import ast
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"

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


# --------------------------------------------------------------------------- loading


def load_records(task: str) -> list[dict]:
    path = DATA_DIR / f"{task}.jsonl"
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_dataset_dict(task: str):
    """Return a datasets.DatasetDict with a single "test" split."""
    import datasets  # lazy: keep module import stdlib-only

    records = load_records(task)
    # Dataset.from_list takes its columns from the first row only; use the
    # union so subtypes with extra fields can share a file.
    columns: dict[str, None] = {}
    for rec in records:
        columns.update(dict.fromkeys(rec))
    rows = [{col: rec.get(col) for col in columns} for rec in records]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# lm-eval calls custom_dataset(**metadata, **dataset_kwargs); nothing to configure.
def load_coordinate_processing(**kwargs: Any):
    return load_dataset_dict("coordinate_processing")


def load_spatial_reasoning(**kwargs: Any):
    return load_dataset_dict("spatial_reasoning")


def load_address_parsing(**kwargs: Any):
    return load_dataset_dict("address_parsing")


def load_location_ner(**kwargs: Any):
    return load_dataset_dict("location_ner")


def load_ner_locations(**kwargs: Any):
    return load_dataset_dict("ner_locations")


# --------------------------------------------------------------------------- JSON extraction

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"```[ \t]*(?:json[c5]?|javascript|js|python)?[ \t]*\n?(.*?)```", re.S | re.I)
_TRAILING_COMMA = re.compile(r",\s*(?=[}\]])")
# One "key: value" pair of a flat object. Quoted values end at a quote that is
# followed by "," or "}", which tolerates unescaped quotes inside DMS strings
# such as "48°51'24"N".
_LOOSE_PAIR = re.compile(
    r"""(?:^|[{,])\s*
        (?:"(?P<dkey>[^"]+)"|'(?P<skey>[^']+)'|(?P<bkey>[A-Za-z_]\w*))\s*:\s*
        (?:"(?P<dval>.*?)"|'(?P<sval>.*?)'|(?P<bval>[^,{}]*?))
        \s*(?=,|}|$)""",
    re.S | re.X,
)
_CLOSERS = {"{": "}", "[": "]"}


def strip_reasoning(text: str) -> str:
    text = _THINK_BLOCK.sub("", text)
    # Chat templates often open <think> in the prompt, so only "</think>" shows up.
    if re.search(r"</think>", text, re.I):
        text = re.split(r"</think>", text, flags=re.I)[-1]
    # An unclosed <think> means the budget ran out while reasoning.
    return re.split(r"<think>", text, flags=re.I)[0]


def _bracket_spans(text: str, opens: str) -> list[str]:
    """Outermost {...} / [...] substrings whose opening bracket is in `opens`.

    Quotes are ignored on purpose: model output often has unescaped quotes,
    and brackets inside the strings these tasks ask for are rare.
    """
    spans: list[str] = []
    depth, start, opener = 0, 0, ""
    for i, ch in enumerate(text):
        if depth == 0:
            if ch in opens:
                opener, depth, start = ch, 1, i
        elif ch == opener:
            depth += 1
        elif ch == _CLOSERS[opener]:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _loose_object(candidate: str) -> dict | None:
    body = candidate.strip()[1:-1].strip().rstrip(",")
    if not body:
        return None
    result: dict[str, Any] = {}
    pos = 0
    for m in _LOOSE_PAIR.finditer(body):
        if body[pos : m.start()].strip(" \t\r\n,"):
            return None  # unexplained text between pairs: not an object
        key = m["dkey"] or m["skey"] or m["bkey"]
        if m["dval"] is not None:
            value: Any = m["dval"].replace('\\"', '"')
        elif m["sval"] is not None:
            value = m["sval"]
        else:
            bare = m["bval"].strip()
            try:
                value = json.loads(bare)
            except ValueError:
                value = bare
        result[key] = value
        pos = m.end()
    if not result or body[pos:].strip(" \t\r\n,"):
        return None
    return result


_STRICT_ATTEMPTS: tuple[Callable[[str], Any], ...] = (
    json.loads,
    lambda s: json.loads(_TRAILING_COMMA.sub("", s)),
    ast.literal_eval,  # Python-style literals: single quotes, True/None
)


def _parse_strict(candidate: str) -> Any:
    for attempt in _STRICT_ATTEMPTS:
        try:
            return attempt(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _parse_object(candidate: str) -> dict | None:
    obj = _parse_strict(candidate)
    if not isinstance(obj, dict):
        obj = _loose_object(candidate)
    return obj if isinstance(obj, dict) and obj else None


def _parse_list(candidate: str) -> list | None:
    value = _parse_strict(candidate)
    if isinstance(value, list):
        return value
    # A list of objects with some unescaped quote inside: parse object by object.
    inner = candidate.strip()[1:-1]
    spans = _bracket_spans(inner, "{")
    objects = [_parse_object(span) for span in spans]
    if spans and all(obj is not None for obj in objects):
        return objects
    return None


def extract_json_value(text: str | None, opens: str = "{[") -> Any:
    """The answer value (object or list) in a model reply, or None.

    Ignores <think> blocks, prefers fenced code blocks (the last one first),
    and takes the last parseable value: answers come after any echoed format
    example.
    """
    if not text:
        return None
    text = strip_reasoning(text)
    for source in [*reversed(_FENCE.findall(text)), text]:
        for candidate in reversed(_bracket_spans(source, opens)):
            value = _parse_object(candidate) if candidate[0] == "{" else _parse_list(candidate)
            if value is not None:
                return value
    return None


def extract_json(text: str | None) -> dict | None:
    """The answer object in a model reply, or None (see extract_json_value)."""
    return extract_json_value(text, "{")


# --------------------------------------------------------------------------- value parsing

_KEY_ALIASES = {
    "lat": ("lat", "latitude"),
    "lon": ("lon", "lng", "long", "longitude"),
}
_MINUS = "-\u2212\u2013"  # hyphen, minus sign, en dash
# Character class of signs; "-" escaped so it is not read as a range.
_SIGN_CLASS = "[+" + re.escape(_MINUS) + "]"
_DECIMAL = re.compile(
    rf"^(?P<sign>{_SIGN_CLASS})?\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?:°|º|˚|deg(?:rees?)?\.?)?$",
    re.I,
)
_HEMISPHERES = {"lat": {"N": 1, "S": -1}, "lon": {"E": 1, "W": -1}}
_HEMI_WORDS = {"NORTH": "N", "SOUTH": "S", "EAST": "E", "WEST": "W"}
# After normalisation: degree separator "°" or whitespace; minute mark "'" or
# whitespace (or nothing when seconds are missing); optional seconds with '"'.
_DMS_BODY = re.compile(
    r"""^(?P<deg>\d{1,3})\s*(?:°\s*|\s+)
        (?P<min>\d{1,2})\s*(?:'\s*|\s+|$)
        (?:(?P<sec>\d{1,2}(?:\.\d+)?)\s*"?)?$""",
    re.X,
)


def find_component(obj: dict, axis: str) -> Any:
    """Value for "lat" or "lon" (aliases, any case), looking one level deep."""
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for alias in _KEY_ALIASES[axis]:
        if alias in lowered:
            return lowered[alias]
    for value in obj.values():
        if isinstance(value, dict):
            found = find_component(value, axis)
            if found is not None:
                return found
    return None


def parse_decimal(value: Any) -> float | None:
    """Signed decimal degrees from a number or a string like "48.8566°" / "48.86 deg".

    Hemisphere letters are rejected: the task asks for the sign convention.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        m = _DECIMAL.match(value.strip())
        if not m:
            return None
        number = float(m["num"]) * (-1 if m["sign"] and m["sign"] in _MINUS else 1)
    else:
        return None
    return number if math.isfinite(number) else None


def _normalise_dms(text: str) -> str:
    s = text.strip().upper()
    for word, letter in _HEMI_WORDS.items():
        s = re.sub(rf"\b{word}\b", letter, s)
    s = re.sub(r"DEG(?:REES?)?\.?", "°", s)
    s = s.replace("º", "°").replace("˚", "°")
    # Seconds marks first, so "''" is not read as two minute marks.
    for mark in ("''", "′′", "″", "”", "“", "\u02ba"):
        s = s.replace(mark, '"')
    for mark in ("′", "’", "‘", "`", "´", "\u02b9"):
        s = s.replace(mark, "'")
    return s


def parse_dms(value: Any, axis: str) -> float | None:
    """Signed decimal degrees from a DMS string such as 48°51'24"N.

    Accepts ° / "deg" / spaces, unicode primes, '' for seconds, missing or
    decimal seconds, hemisphere letter before or after, or a leading minus.
    The hemisphere letter must suit the axis (N/S for lat, E/W for lon).
    """
    if not isinstance(value, str):
        return None
    s = _normalise_dms(value)
    sign = 1
    letters = _HEMISPHERES[axis]
    head = re.match(r"^([NSEW])\s*", s)
    tail = re.search(r"\s*([NSEW])$", s)
    if head and tail:
        return None
    if head or tail:
        letter = (head or tail)[1]
        if letter not in letters:
            return None
        sign = letters[letter]
        s = s[head.end() :] if head else s[: tail.start()]
    m = re.match(rf"^({_SIGN_CLASS})\s*", s)
    if m:
        if m[1] in _MINUS:
            sign = -1  # "-33°52'S" is still south, not north
        s = s[m.end() :]
    m = _DMS_BODY.match(s.strip())
    if not m:
        return None
    degrees, minutes = int(m["deg"]), int(m["min"])
    seconds = float(m["sec"]) if m["sec"] else 0.0
    if minutes >= 60 or seconds >= 60:
        return None
    result = degrees + minutes / 60 + seconds / 3600
    if result > (90 if axis == "lat" else 180):
        return None
    return sign * result


def _canon_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().casefold())


def find_value(obj: dict, aliases: Sequence[str]) -> Any:
    """Value of the first alias present (any case, spaces or hyphens for "_"), looking one level deep."""
    lowered = {_canon_key(k): v for k, v in obj.items()}
    for alias in aliases:
        if alias in lowered:
            return lowered[alias]
    for value in obj.values():
        if isinstance(value, dict):
            found = find_value(value, aliases)
            if found is not None:
                return found
    return None


# --- numbers with units

KM_UNITS = (
    dict.fromkeys(("km", "kms", "kilometre", "kilometres", "kilometer", "kilometers"), 1.0)
    | dict.fromkeys(("m", "metre", "metres", "meter", "meters"), 0.001)
    | dict.fromkeys(("mi", "mile", "miles"), 1.609344)
)
METRE_UNITS = dict.fromkeys(("m", "metre", "metres", "meter", "meters"), 1.0) | dict.fromkeys(
    ("km", "kilometre", "kilometres", "kilometer", "kilometers"), 1000.0
)
DEGREE_UNITS = dict.fromkeys(("°", "º", "˚", "deg", "degs", "degree", "degrees"), 1.0)

_APPROX = re.compile(r"^(?:~|≈|about|approx(?:\.|imately)?|roughly|around|ca\.)\s*", re.I)
_QUANTITY = re.compile(
    rf"^(?P<sign>{_SIGN_CLASS})?\s*(?P<num>\d[\d,.'\s\u00a0\u202f]*?(?:[eE][+-]?\d+)?)\s*(?P<unit>[^\d\s,.'].*)?$",
    re.S,
)
_GROUP_SEPARATORS = ",'\\s\u00a0\u202f"
_GROUPED_THOUSANDS = re.compile(rf"\d{{1,3}}(?P<sep>[{_GROUP_SEPARATORS}])\d{{3}}(?:(?P=sep)\d{{3}})*(?:\.\d+)?")


def _to_float(num: str) -> float | None:
    """English numbers, thousands grouped by , ' or spaces, or a single decimal comma."""
    s = num.strip().rstrip(".")
    if re.fullmatch(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", s):
        return float(s)
    if _GROUPED_THOUSANDS.fullmatch(s):
        return float(re.sub(rf"[{_GROUP_SEPARATORS}]", "", s))
    if re.fullmatch(r"\d+,\d+", s):  # "1234,5": decimal comma ("1,234" was caught above)
        return float(s.replace(",", "."))
    if re.fullmatch(r"\d{1,3}(?:\.\d{3})+,\d+", s):  # "1.234,5"
        return float(s.replace(".", "").replace(",", "."))
    return None


def parse_quantity(value: Any, units: dict[str, float]) -> float | None:
    """A number, or a string like "1,234.5 km" / "45°" / "~300 m", in the units' base.

    A missing unit means the unit the prompt asked for; an unknown unit fails.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        s = _APPROX.sub("", value.strip())
        s = re.sub(r"\s*\([^)]*\)\s*$", "", s)  # trailing "(approx.)"
        m = _QUANTITY.match(s)
        if not m:
            return None
        parsed = _to_float(m["num"])
        if parsed is None:
            return None
        unit = (m["unit"] or "").strip().rstrip(".").strip().casefold()
        factor = units.get(unit) if unit else 1.0
        if factor is None:
            return None
        number = parsed * factor * (-1 if m["sign"] and m["sign"] in _MINUS else 1)
    else:
        return None
    return number if math.isfinite(number) else None


# --- labels and names


def fold(text: str) -> str:
    """Casefolded, accent-free form for comparing names."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def normalise_name(text: str) -> str:
    """Place names compared loosely: accents, case, punctuation and a leading "the" ignored,
    "&" read as "and" ("the D.R. Congo" -> "dr congo"). generate.normalise_answer is the same
    rule: the accepted names baked into the data are distinct under it."""
    s = fold(text).replace("&", " and ")
    s = re.sub(r"[.,;:!?'’‘`\"()]", "", s)
    s = " ".join(re.sub("[-\u2010-\u2015]", " ", s).split())  # hyphens and dashes
    return s[4:] if s.startswith("the ") else s


def _short_reply(text: str | None, max_chars: int = 60) -> str | None:
    """A bare answer without JSON: the last non-empty line, if short."""
    if not text:
        return None
    lines = [line.strip() for line in strip_reasoning(text).splitlines() if line.strip()]
    if not lines:
        return None
    line = re.sub(r"^(?:final\s+)?answer\s*[:\-]\s*", "", lines[-1], flags=re.I)
    line = line.strip().strip("*`\"'").rstrip(".").strip()
    if not line or len(line) > max_chars or any(ch in line for ch in "{}[]"):
        return None
    return line


# --------------------------------------------------------------------------- coordinate_processing

# A scorer reads one reply for one doc: True/False when the reply parsed,
# None when it did not (then acc = 0 and parse_rate = 0).
Scorer = Callable[[dict, str | None], bool | None]
ComponentParser = Callable[[Any, str], float | None]


def within(predicted: float, truth: float, tolerance: float) -> bool:
    return abs(predicted - truth) <= tolerance + _FLOAT_SLACK


def angle_difference(a: float, b: float) -> float:
    """Smallest absolute difference of two bearings in degrees (0..180)."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _score_latlon(parse_component: ComponentParser, tolerance: float) -> Scorer:
    def scorer(doc: dict, text: str | None) -> bool | None:
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


def _score_utm_forward(doc: dict, text: str | None) -> bool | None:
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


def _score_distance(doc: dict, text: str | None) -> bool | None:
    obj = extract_json(text)
    distance = parse_quantity(find_value(obj, _DISTANCE_KEYS), KM_UNITS) if obj else None
    if distance is None:
        return None
    truth = float(doc["distance_km"])
    return abs(distance - truth) <= DISTANCE_REL_TOLERANCE * truth + _FLOAT_SLACK


def _score_bearing(doc: dict, text: str | None) -> bool | None:
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


def _score_further_north(doc: dict, text: str | None) -> bool | None:
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


def score(doc: dict, text: str | None) -> dict[str, int]:
    """{"acc", "parse_rate", "acc_<subtype>"} for one model reply to one coordinate_processing doc."""
    metrics = _verdict_metrics(SCORERS[doc["subtype"]](doc, text))
    return metrics | {f"acc_{doc['subtype']}": metrics["acc"]}


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
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


def _score_direction(doc: dict, text: str | None) -> bool | None:
    predicted = _direction_answer(text)
    return None if predicted is None else predicted == doc["label"]


def _score_containment(doc: dict, text: str | None) -> bool | None:
    """Correct when the reply's name equals one of the item's accepted names (official,
    short and common names of the right country or state, baked into the data)."""
    answer = _answer_text(text)
    if answer is None or not normalise_name(answer):
        return None
    return normalise_name(answer) in {normalise_name(a) for a in doc["accepted"]}


def process_spatial_reasoning(doc: dict, results: list[str]) -> dict[str, int]:
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


# --------------------------------------------------------------------------- address_parsing

ADDRESS_FIELDS = ("house_number", "road", "unit", "city", "state", "postcode", "country")
_ADDRESS_KEY_ALIASES: dict[str, str] = {
    alias: name
    for name, aliases in {
        "house_number": ("house_number", "housenumber", "house_no", "house", "number", "street_number"),
        "road": ("road", "street", "street_name", "road_name"),
        "unit": ("unit", "apartment", "apt", "flat", "suite", "unit_number"),
        "city": ("city", "town", "locality", "municipality"),
        "state": ("state", "province", "region", "state_province"),
        "postcode": ("postcode", "postal_code", "post_code", "zip", "zip_code", "zipcode"),
        "country": ("country", "country_name"),
    }.items()
    for alias in aliases
}
_EMPTY_VALUES = {"", "null", "none", "n/a", "na", "-"}

Counts = tuple[int, int, int]  # (true positives, false positives, false negatives)


def _address_value(value: Any) -> str | None:
    """Whitespace- and case-normalised text of one field value; None for empty ones."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    normalised = " ".join(value.split()).casefold()
    return None if normalised in _EMPTY_VALUES else normalised


def address_pairs(obj: Any) -> set[tuple[str, str]] | None:
    """(field, normalised value) pairs of a parsed reply; None if it uses none of the schema's keys."""
    if not isinstance(obj, dict):
        return None
    keyed = ((_canon_key(k), v) for k, v in obj.items())
    known = {_ADDRESS_KEY_ALIASES[k]: v for k, v in keyed if k in _ADDRESS_KEY_ALIASES}
    if not known:
        # One wrapper level, e.g. {"address": {...}}.
        nested = [address_pairs(v) for v in obj.values() if isinstance(v, dict)]
        return next((pairs for pairs in nested if pairs is not None), None)
    return {(name, text) for name, value in known.items() if (text := _address_value(value)) is not None}


def _match_counts(predicted: Iterable, gold: Iterable) -> Counts:
    """Multiset matching: each gold item can be matched once."""
    p, g = Counter(predicted), Counter(gold)
    tp = sum((p & g).values())
    return tp, sum(p.values()) - tp, sum(g.values()) - tp


def process_address_parsing(doc: dict, results: list[str]) -> dict[str, Any]:
    """Per-doc (tp, fp, fn) over (field, value) pairs for the micro metrics, plus exact_match and parse_rate."""
    gold = {(name, text) for name in ADDRESS_FIELDS if (text := _address_value((doc["gold"] or {}).get(name)))}
    predicted = address_pairs(extract_json(results[0] if results else None))
    counts = _match_counts(predicted or (), gold)
    return {
        "f1": counts,
        "precision": counts,
        "recall": counts,
        "exact_match": int(predicted == gold),
        "parse_rate": int(predicted is not None),
    }


# --------------------------------------------------------------------------- location_ner / ner_locations

NER_TYPES = ("PER", "ORG", "LOC")
_TYPE_ALIASES = {
    **dict.fromkeys(("loc", "location", "gpe", "place", "city", "country", "state", "region"), "LOC"),
    **dict.fromkeys(("per", "person", "people", "pers"), "PER"),
    **dict.fromkeys(("org", "organization", "organisation", "company", "institution"), "ORG"),
}
_TEXT_KEYS = ("text", "entity", "name", "span", "word", "value", "mention")
_TYPE_KEYS = ("type", "label", "tag", "entity_type", "category", "ner", "class")
_LIST_KEYS = ("entities", "locations", "named_entities", "results", "answer", "items")

Entity = tuple[str, str | None]  # (span text, type or None when the reply gave none)


def canonical_type(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    key = re.sub(r"^[bi]-", "", value.strip().casefold())  # BIO prefixes
    return _TYPE_ALIASES.get(key, value.strip().upper() or None)


def _span_text(value: str) -> str:
    # Exact span text (case-sensitive); only whitespace is normalised.
    return " ".join(value.split())


def _entity_items(value: Any, default_type: str | None) -> list[Entity] | None:
    if isinstance(value, dict):
        lowered = {_canon_key(k): v for k, v in value.items()}
        for key in _LIST_KEYS:
            if isinstance(lowered.get(key), list):
                return _entity_items(lowered[key], default_type)
        if any(key in lowered for key in _TEXT_KEYS):
            return _entity_items([value], default_type)  # a single entity
        # Grouped by type: {"LOC": ["Paris"], "PER": [...]}.
        grouped: list[Entity] = []
        for key, names in value.items():
            etype = canonical_type(key)
            if etype not in NER_TYPES or not isinstance(names, list):
                return None
            grouped += [(_span_text(n), etype) for n in names if isinstance(n, str) and n.strip()]
        return grouped
    if not isinstance(value, list):
        return None
    items: list[Entity] = []
    for entry in value:
        if isinstance(entry, str):
            items.append((_span_text(entry), default_type))
        elif isinstance(entry, dict):
            lowered = {_canon_key(k): v for k, v in entry.items()}
            span = next((lowered[k] for k in _TEXT_KEYS if k in lowered), None)
            etype = next((lowered[k] for k in _TYPE_KEYS if k in lowered), None)
            if isinstance(span, str):
                items.append((_span_text(span), canonical_type(etype) if etype is not None else default_type))
        elif isinstance(entry, list | tuple) and len(entry) == 2 and all(isinstance(x, str) for x in entry):
            items.append((_span_text(entry[0]), canonical_type(entry[1])))
    return [(span, etype) for span, etype in items if span]


def parse_entities(text: str | None, default_type: str | None = None) -> list[Entity] | None:
    """Entities in a reply: a JSON list of {"text", "type"} objects, or common variants
    (wrapped in {"entities": [...]}, grouped by type, [text, type] pairs, bare strings
    typed `default_type`). None when no such structure is found."""
    value = extract_json_value(text)
    return None if value is None else _entity_items(value, default_type)


def _gold_entities(doc: dict) -> list[tuple[str, str]]:
    return [(_span_text(e["text"]), e["type"]) for e in doc["entities"] or ()]


def process_location_ner(doc: dict, results: list[str]) -> dict[str, Any]:
    gold = [e for e in _gold_entities(doc) if e[1] == "LOC"]
    # Items the reply itself typed as something else are not location claims.
    items = parse_entities(results[0] if results else None, default_type="LOC")
    predicted = [(span, "LOC") for span, etype in items or () if etype == "LOC"]
    counts = _match_counts(predicted, gold)
    return {"f1": counts, "precision": counts, "recall": counts, "parse_rate": int(items is not None)}


def process_ner_locations(doc: dict, results: list[str]) -> dict[str, Any]:
    gold = _gold_entities(doc)
    items = parse_entities(results[0] if results else None)
    # An untyped or off-schema item can never match, so it is a false positive.
    predicted = [(span, etype or "?") for span, etype in items or ()]
    counts = _match_counts(predicted, gold)
    metrics: dict[str, Any] = {"f1": counts, "precision": counts, "recall": counts}
    for etype in NER_TYPES:
        metrics[f"{etype.lower()}_f1"] = _match_counts(
            [p for p in predicted if p[1] == etype], [g for g in gold if g[1] == etype]
        )
    return metrics | {"parse_rate": int(items is not None)}


# --------------------------------------------------------------------------- corpus-level aggregation


def _totals(items: Iterable[Sequence[int]]) -> Counts:
    tp = fp = fn = 0
    for item in items:
        tp, fp, fn = tp + int(item[0]), fp + int(item[1]), fn + int(item[2])
    return tp, fp, fn


def micro_precision(items: Iterable[Sequence[int]]) -> float:
    tp, fp, fn = _totals(items)
    # No predictions at all: perfect only if there was nothing to find.
    return tp / (tp + fp) if tp + fp else float(fn == 0)


def micro_recall(items: Iterable[Sequence[int]]) -> float:
    tp, _fp, fn = _totals(items)
    return tp / (tp + fn) if tp + fn else 1.0


def micro_f1(items: Iterable[Sequence[int]]) -> float:
    """Corpus-level F1 from summed (tp, fp, fn): 2tp / (2tp + fp + fn), not a mean of per-doc F1."""
    tp, fp, fn = _totals(items)
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 1.0

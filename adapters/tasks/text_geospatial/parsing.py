"""Reading model replies for the text_geospatial tasks: reply clean-up and JSON
extraction, then value parsing (degrees, DMS, numbers with units, labels, names).
Standard library only, like everything utils.py loads."""

import ast
import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, cast

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


def _loose_object(candidate: str) -> dict[str, Any] | None:
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


def _parse_object(candidate: str) -> dict[str, Any] | None:
    obj = _parse_strict(candidate)
    if not isinstance(obj, dict):
        obj = _loose_object(candidate)
    return obj if isinstance(obj, dict) and obj else None


def _parse_list(candidate: str) -> list[Any] | None:
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


def extract_json(text: str | None) -> dict[str, Any] | None:
    """The answer object in a model reply, or None (see extract_json_value)."""
    return cast("dict[str, Any] | None", extract_json_value(text, "{"))  # "{" opens only objects


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


def find_component(obj: dict[str, Any], axis: str) -> Any:
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
    found = head or tail
    if found:
        letter = found[1]
        if letter not in letters:
            return None
        sign = letters[letter]
        s = s[found.end() :] if head else s[: found.start()]
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


def find_value(obj: dict[str, Any], aliases: Sequence[str]) -> Any:
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
    "&" read as "and" ("the D.R. Congo" -> "dr congo"). The generator keys accepted names by it
    (generators.containment.normalise_answer), so the names baked into the data are distinct under it."""
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

"""Scoring of address_parsing, location_ner and ner_locations: each doc returns its
(tp, fp, fn) counts, which the corpus-level micro aggregations sum. The accuracy-scored
tasks are in scoring.py."""

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .parsing import _canon_key, extract_json, extract_json_value

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


def _match_counts(predicted: Iterable[Any], gold: Iterable[Any]) -> Counts:
    """Multiset matching: each gold item can be matched once."""
    p, g = Counter(predicted), Counter(gold)
    tp = sum((p & g).values())
    return tp, sum(p.values()) - tp, sum(g.values()) - tp


def process_address_parsing(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
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


def _gold_entities(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(_span_text(e["text"]), e["type"]) for e in doc["entities"] or ()]


def process_location_ner(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    gold = [e for e in _gold_entities(doc) if e[1] == "LOC"]
    # Items the reply itself typed as something else are not location claims.
    items = parse_entities(results[0] if results else None, default_type="LOC")
    predicted = [(span, "LOC") for span, etype in items or () if etype == "LOC"]
    counts = _match_counts(predicted, gold)
    return {"f1": counts, "precision": counts, "recall": counts, "parse_rate": int(items is not None)}


def process_ner_locations(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
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

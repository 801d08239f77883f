"""Answer parsing and scoring of the text_geospatial tasks on hand-written model
outputs: JSON in fences or prose, <think> blocks, trailing commas, numbers with
units, unparseable replies (scored 0, parse_rate 0), and the micro metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_by_path

from adapters.tasks.text_geospatial import parsing

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "adapters" / "tasks" / "text_geospatial"


utils = load_by_path("text_geospatial_utils_parsing_test", TASK_DIR / "utils.py")


# --------------------------------------------------------------------------- shared helpers


@pytest.mark.parametrize(
    "value, expected",
    [
        (1234, 1234.0),
        (12.5, 12.5),
        ("1234", 1234.0),
        ("1234 km", 1234.0),
        ("1234km", 1234.0),
        ("1,234.5 km", 1234.5),
        ("1 234 km", 1234.0),
        ("1\u202f234 km", 1234.0),
        ("1'234 km", 1234.0),
        ("1234,5 km", 1234.5),
        ("1.234,5 km", 1234.5),
        ("~1234 km", 1234.0),
        ("approximately 1234 kilometres", 1234.0),
        ("1234 km.", 1234.0),
        ("1234 km (approx.)", 1234.0),
        ("1234000 m", 1234.0),
        ("766.8 miles", 766.8 * 1.609344),
        ("-12 km", -12.0),
        ("\u221212 km", -12.0),
        ("1.2e3 km", 1200.0),
    ],
)
def test_parse_quantity_in_km(value, expected):
    assert parsing.parse_quantity(value, parsing.KM_UNITS) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [None, True, "", "far", "1234 furlongs", "12 34 km", "1,23,4 km", "km 1234", float("nan"), "inf km", [1234]],
)
def test_parse_quantity_rejects(value):
    assert parsing.parse_quantity(value, parsing.KM_UNITS) is None


@pytest.mark.parametrize("value", ["45°", "45 °", "45º", "45 deg", "45 degrees", "045.0°", 45])
def test_parse_quantity_in_degrees(value):
    assert parsing.parse_quantity(value, parsing.DEGREE_UNITS) == 45.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[{"text": "Lyon", "type": "LOC"}]', [{"text": "Lyon", "type": "LOC"}]),
        ('```json\n[{"text": "Lyon", "type": "LOC"},]\n```', [{"text": "Lyon", "type": "LOC"}]),
        ("Sure, here you go: [{'text': 'Lyon', 'type': 'LOC'}] Hope that helps!", [{"text": "Lyon", "type": "LOC"}]),
        ('<think>maybe [{"text": "Paris"}]</think>\n[]', []),
        ('Format: [{"text": "<name>"}]\nAnswer: [{"text": "Lyon"}]', [{"text": "Lyon"}]),
        ('{"entities": [{"text": "Lyon"}]}', {"entities": [{"text": "Lyon"}]}),
        ('[{"text": "Lyon", "note": "the "old" town"}]', [{"text": "Lyon", "note": 'the "old" town'}]),
        ('```json\n{"a": 1}\n```\n```json\n{"a": 2}\n```', {"a": 2}),
    ],
)
def test_extract_json_value(text, expected):
    assert parsing.extract_json_value(text) == expected


@pytest.mark.parametrize("text", [None, "", "no json", "[unclosed", "<think>[1, 2]", "[north, south]"])
def test_extract_json_value_none(text):
    assert parsing.extract_json_value(text) is None


def test_micro_aggregation_sums_counts_instead_of_averaging():
    # One doc with 9/10 right, one with 0/1: micro F1 = 18/22, mean of F1s = (0.9 + 0) / 2.
    items = [(9, 1, 1), (0, 1, 1)]
    assert utils.micro_f1(items) == pytest.approx(18 / 22)
    assert utils.micro_precision(items) == pytest.approx(9 / 11)
    assert utils.micro_recall(items) == pytest.approx(9 / 11)
    assert utils.micro_f1([(0, 0, 0)]) == 1.0  # nothing to find, nothing claimed
    assert utils.micro_precision([(0, 0, 3)]) == 0.0
    assert utils.micro_f1([[2, 0, 0], [0, 0, 2]]) == pytest.approx(2 / 3)  # lists, as after a JSON round trip


# --------------------------------------------------------------------------- spatial_reasoning


def _spatial(doc: dict, text: str) -> dict:
    return utils.process_spatial_reasoning(doc, [text])


K3_DOC = {"subtype": "relative_position_k3", "hops": 3, "label": "north-east"}
SAME_DOC = {"subtype": "relative_position_k2", "hops": 2, "label": "same place"}
CITY_DOC = {"subtype": "city_direction", "label": "south-west"}
COUNTRY_DOC = {"subtype": "containment_country", "accepted": ["Czechia", "Czech Republic"]}
DRC_DOC = {
    "subtype": "containment_country",
    "accepted": [
        "Democratic Republic of the Congo",
        "Democratic Republic of Congo",
        "DR Congo",
        "DRC",
        "Congo-Kinshasa",
    ],
}
STATE_DOC = {"subtype": "containment_us_state", "accepted": ["Texas", "TX"]}


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": "north-east"}',
        '```json\n{"answer": "North East"}\n```',
        '<think>x+2, y+1 so south-west? no</think>{"answer": "northeast"}',
        "{'answer': 'NE',}",
        '{"direction": "north–east"}',
        "The chair is north-east of the lamp.",  # prose, no JSON
        "After moving south and then north-east twice, the answer is north-east.",
    ],
)
def test_story_answers(text):
    assert _spatial(K3_DOC, text) == {"acc": 1, "parse_rate": 1, "acc_k3": 1}


@pytest.mark.parametrize("text", ['{"answer": "same place"}', '{"answer": "overlap"}', '{"answer": "Same square."}'])
def test_same_place_answers(text):
    assert _spatial(SAME_DOC, text) == {"acc": 1, "parse_rate": 1, "acc_k2": 1}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"answer": "north"}', {"acc": 0, "parse_rate": 1, "acc_k3": 0}),
        ('{"answer": "upper right"}', {"acc": 0, "parse_rate": 0, "acc_k3": 0}),
        ('{"answer": 45}', {"acc": 0, "parse_rate": 0, "acc_k3": 0}),
        ("I cannot tell.", {"acc": 0, "parse_rate": 0, "acc_k3": 0}),
        ("<think>it is north-east", {"acc": 0, "parse_rate": 0, "acc_k3": 0}),
        ("", {"acc": 0, "parse_rate": 0, "acc_k3": 0}),
    ],
)
def test_story_wrong_or_unparseable(text, expected):
    assert _spatial(K3_DOC, text) == expected


def test_city_direction_reports_its_own_metric():
    assert _spatial(CITY_DOC, '{"answer": "SW"}') == {"acc": 1, "parse_rate": 1, "acc_city_direction": 1}
    assert _spatial(CITY_DOC, '{"answer": "same place"}') == {"acc": 0, "parse_rate": 1, "acc_city_direction": 0}


@pytest.mark.parametrize(
    "doc, text, expected_acc",
    [
        (COUNTRY_DOC, '{"answer": "Czechia"}', 1),
        (COUNTRY_DOC, '{"answer": "czech republic"}', 1),
        (COUNTRY_DOC, '{"answer": "The Czech Republic."}', 1),
        (COUNTRY_DOC, '```json\n{"answer": "Czech Republic",}\n```', 1),
        (COUNTRY_DOC, '{"answer": "CZE"}', 0),  # a code, not a name
        (DRC_DOC, '{"answer": "the DRC"}', 1),
        (DRC_DOC, '{"answer": "D.R. Congo"}', 1),
        (DRC_DOC, '{"answer": "Congo – Kinshasa"}', 1),  # dashes read as hyphens
        (DRC_DOC, '{"answer": "congo-kinshasa"}', 1),
        (DRC_DOC, '{"answer": "The Democratic Republic of Congo"}', 1),
        (DRC_DOC, '{"answer": "Republic of the Congo"}', 0),
        (DRC_DOC, '{"answer": "Congo"}', 0),
        (COUNTRY_DOC, "<think>Brno is in Moravia</think>\nAnswer: Czechia", 1),
        (COUNTRY_DOC, '{"answer": "Slovakia"}', 0),
        (COUNTRY_DOC, '{"country": "Czechoslovakia"}', 0),
        (STATE_DOC, '{"answer": "texas"}', 1),
        (STATE_DOC, '{"answer": "TX"}', 1),
        (STATE_DOC, '{"state": "Oklahoma"}', 0),
    ],
)
def test_containment_answers(doc, text, expected_acc):
    assert _spatial(doc, text) == {"acc": expected_acc, "parse_rate": 1, "acc_containment": expected_acc}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Democratic Republic of the Congo", "democratic republic of the congo"),
        ("the D.R. Congo", "dr congo"),
        ("Côte d’Ivoire", "cote divoire"),
        ("Trinidad & Tobago", "trinidad and tobago"),
        ("  U.S.A. ", "usa"),
        ("Guinea-Bissau", "guinea bissau"),
    ],
)
def test_normalise_name(text, expected):
    assert parsing.normalise_name(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"foo": "Czechia"}',
        '{"answer": ""}',
        "",
        "It is in central Europe, near the borders with Austria and Slovakia.",
    ],
)
def test_containment_unparseable(text):
    assert _spatial(COUNTRY_DOC, text) == {"acc": 0, "parse_rate": 0, "acc_containment": 0}


# --------------------------------------------------------------------------- address_parsing

FIELDS = ("house_number", "road", "unit", "city", "state", "postcode", "country")
US_DOC = {
    "gold": dict.fromkeys(FIELDS)
    | {"house_number": "9373", "road": "Church Rd", "city": "Placentia", "state": "CA", "postcode": "92870"}
}
GOLD_REPLY = '{"house_number": "9373", "road": "Church Rd", "city": "Placentia", "state": "CA", "postcode": "92870"}'


def _address(text: str) -> dict:
    return utils.process_address_parsing(US_DOC, [text])


def _perfect(n: int = 5) -> dict:
    return {"f1": (n, 0, 0), "precision": (n, 0, 0), "recall": (n, 0, 0), "exact_match": 1, "parse_rate": 1}


@pytest.mark.parametrize(
    "text",
    [
        GOLD_REPLY,
        f"```json\n{GOLD_REPLY[:-1]},}}\n```",  # trailing comma in a fence
        f"Here is the parsed address:\n{GOLD_REPLY}\nLet me know if you need anything else.",
        f'<think>{{"road": "Church"}}</think>{GOLD_REPLY}',
        # Case and whitespace differences, numbers, nulls and key aliases are fine.
        '{"house_number": 9373, "street": "church  rd", "unit": null, "city": "PLACENTIA", "state": "ca", '
        '"zip": "92870", "country": ""}',
        '{"address": {"House Number": "9373", "Road": "Church Rd", "City": "Placentia", "State": "CA", '
        '"Postal Code": "92870"}}',
        "{'house_number': '9373', 'road': 'Church Rd', 'city': 'Placentia', 'state': 'CA', 'postcode': '92870'}",
    ],
)
def test_address_perfect_replies(text):
    assert _address(text) == _perfect()


def test_address_partial_reply_counts_pairs():
    # Wrong road (1 fp + 1 fn), an extra country (1 fp), postcode missing (1 fn).
    text = '{"house_number": "9373", "road": "Church Road", "city": "Placentia", "state": "CA", "country": "USA"}'
    counts = (3, 2, 2)
    assert _address(text) == {
        "f1": counts,
        "precision": counts,
        "recall": counts,
        "exact_match": 0,
        "parse_rate": 1,
    }


@pytest.mark.parametrize(
    "text",
    ["", "9373 Church Rd, Placentia, CA 92870", '{"foo": "bar"}', '["9373", "Church Rd"]', '{"road": "Church Rd"'],
)
def test_address_unparseable_counts_all_gold_as_missed(text):
    counts = (0, 0, 5)
    assert _address(text) == {"f1": counts, "precision": counts, "recall": counts, "exact_match": 0, "parse_rate": 0}


def test_address_all_null_reply_parses_but_finds_nothing():
    text = json.dumps(dict.fromkeys(FIELDS))
    assert _address(text)["f1"] == (0, 0, 5) and _address(text)["parse_rate"] == 1


# --------------------------------------------------------------------------- location_ner / ner_locations

SENTENCE = "Florence Weber of Bank of Lyon drove from Lyon to Paris and back to Lyon."
NER_DOC = {
    "entities": [
        {"start": 0, "end": 14, "text": "Florence Weber", "type": "PER"},
        {"start": 18, "end": 30, "text": "Bank of Lyon", "type": "ORG"},
        {"start": 42, "end": 46, "text": "Lyon", "type": "LOC"},
        {"start": 50, "end": 55, "text": "Paris", "type": "LOC"},
        {"start": 68, "end": 72, "text": "Lyon", "type": "LOC"},
    ]
}


def test_ner_doc_offsets_are_consistent():
    assert all(SENTENCE[e["start"] : e["end"]] == e["text"] for e in NER_DOC["entities"])


def _loc(text: str) -> dict:
    return utils.process_location_ner(NER_DOC, [text])


def _counts(metrics: dict, key: str = "f1") -> tuple:
    return tuple(metrics[key])


@pytest.mark.parametrize(
    "text",
    [
        '[{"text": "Lyon", "type": "LOC"}, {"text": "Paris", "type": "LOC"}, {"text": "Lyon", "type": "LOC"}]',
        '```json\n[{"text": "Lyon", "type": "LOC"}, {"text": "Paris", "type": "LOC"}, {"text": "Lyon"},]\n```',
        '<think>Florence is a person here</think>[{"text": "Lyon"}, {"text": "Paris"}, {"text": "Lyon"}]',
        'The locations are: ["Lyon", "Paris", "Lyon"]',
        '{"locations": [{"text": "Lyon", "type": "LOC"}, {"text": "Paris", "type": "LOCATION"}, {"text": "Lyon"}]}',
        '{"LOC": ["Lyon", "Paris", "Lyon"]}',
        # Items the reply itself types as something else are not location claims.
        '[{"text": "Florence Weber", "type": "PER"}, {"text": "Lyon", "type": "GPE"}, {"text": "Paris", "type": "LOC"},'
        ' {"text": "Lyon", "type": "LOC"}]',
    ],
)
def test_location_ner_perfect_replies(text):
    assert _loc(text) == {"f1": (3, 0, 0), "precision": (3, 0, 0), "recall": (3, 0, 0), "parse_rate": 1}


@pytest.mark.parametrize(
    "text, counts",
    [
        ('[{"text": "Lyon", "type": "LOC"}, {"text": "Paris", "type": "LOC"}]', (2, 0, 1)),  # second Lyon missed
        ('["Lyon", "Lyon", "Lyon", "Paris"]', (3, 1, 0)),  # one Lyon too many
        ('["Florence", "Lyon", "Paris", "Lyon"]', (3, 1, 0)),  # the person trap
        ('["Bank of Lyon", "Lyon", "Paris", "Lyon"]', (3, 1, 0)),  # the organisation trap
        ('["lyon", "Paris", "Lyon"]', (2, 1, 1)),  # exact span text: case matters
        ('["Lyon,", "Paris", "Lyon"]', (2, 1, 1)),
        ("[]", (0, 0, 3)),
    ],
)
def test_location_ner_multiset_counts(text, counts):
    result = _loc(text)
    assert _counts(result) == counts and result["parse_rate"] == 1


@pytest.mark.parametrize("text", ["", "Lyon, Paris, Lyon", "[Lyon, Paris]", '<think>["Lyon"]'])
def test_location_ner_unparseable(text):
    assert _loc(text) == {"f1": (0, 0, 3), "precision": (0, 0, 3), "recall": (0, 0, 3), "parse_rate": 0}


def _ner(text: str) -> dict:
    return utils.process_ner_locations(NER_DOC, [text])


FULL_NER_REPLY = (
    '[{"text": "Florence Weber", "type": "PER"}, {"text": "Bank of Lyon", "type": "ORG"}, '
    '{"text": "Lyon", "type": "LOC"}, {"text": "Paris", "type": "LOC"}, {"text": "Lyon", "type": "LOC"}]'
)


@pytest.mark.parametrize(
    "text",
    [
        FULL_NER_REPLY,
        f"```json\n{FULL_NER_REPLY[:-1]},]\n```",
        f"<think>Bank of Lyon is an ORG</think>\nEntities:\n{FULL_NER_REPLY}",
        '{"entities": [["Florence Weber", "PERSON"], ["Bank of Lyon", "ORGANIZATION"], ["Lyon", "LOC"], '
        '["Paris", "GPE"], ["Lyon", "B-LOC"]]}',
        '{"PER": ["Florence Weber"], "ORG": ["Bank of Lyon"], "LOC": ["Lyon", "Paris", "Lyon"]}',
    ],
)
def test_ner_perfect_replies(text):
    result = _ner(text)
    assert _counts(result) == (5, 0, 0)
    assert (_counts(result, "loc_f1"), _counts(result, "per_f1"), _counts(result, "org_f1")) == (
        (3, 0, 0),
        (1, 0, 0),
        (1, 0, 0),
    )
    assert result["parse_rate"] == 1


def test_ner_traps_and_types_are_scored_per_type():
    # Person split into a LOC + nothing, org's place tagged LOC, demonym-like MISC item.
    text = (
        '[{"text": "Florence", "type": "LOC"}, {"text": "Bank of Lyon", "type": "LOC"},'
        ' {"text": "Lyon", "type": "LOC"}, {"text": "Paris", "type": "LOC"}, {"text": "Lyon", "type": "LOC"},'
        ' {"text": "French", "type": "MISC"}, {"text": "Weber"}]'
    )
    result = _ner(text)
    assert _counts(result, "loc_f1") == (3, 2, 0)
    assert _counts(result, "per_f1") == (0, 0, 1)
    assert _counts(result, "org_f1") == (0, 0, 1)
    assert _counts(result) == (3, 4, 2)  # MISC and the untyped item are false positives overall
    assert result["parse_rate"] == 1


def test_ner_bare_strings_have_no_type():
    result = _ner('["Florence Weber", "Lyon"]')
    assert _counts(result) == (0, 2, 5) and result["parse_rate"] == 1


@pytest.mark.parametrize("text", ["", "PER: Florence Weber; LOC: Lyon", '{"foo": 1}', "<think>[]</think>"])
def test_ner_unparseable(text):
    result = _ner(text)
    assert _counts(result) == (0, 0, 5) and _counts(result, "loc_f1") == (0, 0, 3)
    assert result["parse_rate"] == 0

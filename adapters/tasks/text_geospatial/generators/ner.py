"""location_ner / ner_locations subtypes: sentences filled from templates with traps
(places inside person and organisation names, demonyms, repeated mentions), entity spans
recorded as they are written; and each task's prompt."""

import random
import re
from collections.abc import Sequence
from typing import Any

from .cities import CityPool
from .formatting import _json_answer
from .ner_vocabulary import _ORG_STEMS, _ORG_SUFFIXES, _ORG_TRAP_PATTERNS, NerVocabulary, ner_vocabulary
from .registry import SubtypeGenerator, subtype

NER_TYPES = ("PER", "ORG", "LOC")

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


class _SentenceBuilder:
    """Fills one template; records every entity span as it is written."""

    def __init__(self, rng: random.Random, vocab: NerVocabulary) -> None:
        self.rng, self.vocab = rng, vocab
        self.text = ""
        self.entities: list[dict[str, Any]] = []
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
    def generate_items(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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


def _finish_location_ner(item: dict[str, Any]) -> dict[str, Any]:
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


def _finish_ner_locations(item: dict[str, Any]) -> dict[str, Any]:
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

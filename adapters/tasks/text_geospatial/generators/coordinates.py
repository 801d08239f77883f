"""coordinate_processing subtypes: DMS <-> decimal, UTM forward and inverse, geodesic
distance, initial bearing and "which city is further north"."""

import random
from typing import Any, cast

import utm

from ..parsing import fold
from .cities import CityPool
from .formatting import PROMPT_DECIMAL_PLACES, _json_answer, _latlon_text, _round, to_dms
from .gazetteer import WGS84, City
from .registry import subtype

# Decimal places shown in utm_forward prompts (~1 m, below the 5 m tolerance).
UTM_PROMPT_DECIMAL_PLACES = 5
# Pairs for distance/bearing: far enough for a 1% tolerance to mean something,
# and short of near-antipodal pairs whose initial bearing is ill-conditioned.
PAIR_MIN_KM, PAIR_MAX_KM = 100.0, 15_000.0
FURTHER_NORTH_MIN_DEG = 1.0

_DECIMAL_REPLY = (
    "Reply with only a JSON object of the form "
    '{"lat": <decimal degrees>, "lon": <decimal degrees>}, '
    "using numbers with at least 4 decimal places."
)


@subtype("dms_to_decimal")
def gen_dms_to_decimal(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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
def gen_decimal_to_dms(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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
def gen_utm_forward(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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
def gen_utm_inverse(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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


def _geodesic_pair(a: City, b: City) -> dict[str, float]:
    # geographiclib is untyped; Inverse's result maps each of its quantities (s12, azi1, ...) to a float.
    return cast("dict[str, float]", WGS84.Inverse(*_shown(a), *_shown(b)))


def _pair_in_range(a: City, b: City) -> bool:
    return PAIR_MIN_KM <= _geodesic_pair(a, b)["s12"] / 1000 <= PAIR_MAX_KM


def _pair_fields(a: City, b: City) -> dict[str, Any]:
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
def gen_geodesic_distance(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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
def gen_initial_bearing(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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
    fa, fb = fold(a.name), fold(b.name)
    return fa not in fb and fb not in fa


def _coordinates_text(rng: random.Random, lat: float, lon: float) -> str:
    # Mixed notation: the task is comparing latitudes, whatever the format.
    if rng.random() < 0.5:
        return _latlon_text(lat, lon)
    return f"{to_dms(lat, 'lat')[0]} {to_dms(lon, 'lon')[0]}"


@subtype("further_north")
def gen_further_north(rng: random.Random, pool: CityPool, n: int) -> list[dict[str, Any]]:
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

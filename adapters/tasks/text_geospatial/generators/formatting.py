"""How values are written into the data: rounding, DMS strings, coordinates in prompts,
JSON answers (names are compared by the scorer's own parsing.fold)."""

import json

# Decimal places written for signed-decimal truth values; 6 places is ~0.1 m,
# far below every tolerance, and keeps the file byte-stable.
DECIMAL_PLACES = 6
# Decimal places shown in decimal_to_dms and pair prompts (~11 m).
PROMPT_DECIMAL_PLACES = 4


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


def _latlon_text(lat: float, lon: float, places: int = PROMPT_DECIMAL_PLACES) -> str:
    return f"lat {lat:.{places}f}, lon {lon:.{places}f}"

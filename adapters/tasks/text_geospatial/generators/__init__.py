"""Subtype generators of the text_geospatial tasks, one module per task family.

Importing the package registers every subtype in `registry.SUBTYPES`; generate.py
groups them into tasks. Shared inputs: `gazetteer` (GeoNames access), `vetting`
(which GeoNames cities are used), `cities` (the vetted city list and the pool a
task draws from), `formatting` (rounding, DMS, JSON answers) and `registry`.
"""

from . import addresses, containment, coordinates, directions, ner  # noqa: F401  (each registers its subtypes)

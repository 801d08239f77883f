"""Loading for the text_geospatial lm-eval tasks, and the functions their YAMLs name.

lm-eval imports this file by path (``!function utils.xxx``), so it must stay
self-contained: standard library only at import time, data located relative
to this file. ``datasets`` is imported lazily inside the loader because lm-eval
wants a DatasetDict and always has ``datasets`` installed. lm-eval executes the
file afresh for every ``!function`` reference, so importing it must stay cheap.

Answer parsing lives in parsing.py; scoring in scoring.py (per-doc accuracy:
coordinate_processing, spatial_reasoning) and f1_scoring.py (per-doc counts and
the corpus-level micro aggregations: address_parsing and the NER tasks). This
file loads the data and re-exports exactly the functions the YAMLs reference.
"""

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

DATA_DIR = Path(__file__).resolve().parent / "data"


# --------------------------------------------------------------------------- loading


def load_records(task: str) -> list[dict[str, Any]]:
    path = DATA_DIR / f"{task}.jsonl"
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_dataset_dict(task: str) -> "datasets.DatasetDict":
    """Return a datasets.DatasetDict with a single "test" split."""
    import datasets  # lazy: keep module import stdlib-only

    records = load_records(task)
    # Dataset.from_list takes its columns from the first row only; use the
    # union so subtypes with extra fields can share a file.
    columns: dict[str, None] = {}
    for rec in records:
        columns.update(dict.fromkeys(rec))
    rows = [{col: rec.get(col) for col in columns} for rec in records]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# lm-eval calls custom_dataset(**metadata, **dataset_kwargs); nothing to configure.
def load_coordinate_processing(**kwargs: Any) -> "datasets.DatasetDict":
    return load_dataset_dict("coordinate_processing")


def load_spatial_reasoning(**kwargs: Any) -> "datasets.DatasetDict":
    return load_dataset_dict("spatial_reasoning")


def load_address_parsing(**kwargs: Any) -> "datasets.DatasetDict":
    return load_dataset_dict("address_parsing")


def load_location_ner(**kwargs: Any) -> "datasets.DatasetDict":
    return load_dataset_dict("location_ner")


def load_ner_locations(**kwargs: Any) -> "datasets.DatasetDict":
    return load_dataset_dict("ner_locations")


# --------------------------------------------------------------------------- scoring


def _package() -> str:
    """The name under which this folder is importable as a package, registered on first use.

    lm-eval executes this file by path, outside any package, so its sibling modules
    cannot be imported by name. The folder is registered as a package named after
    its location: the siblings import each other relatively, are executed once per
    process however often lm-eval re-executes this file, and two copies of the
    folder never share modules.
    """
    folder = Path(__file__).resolve().parent
    name = "_text_geospatial_" + hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return name


_scoring = importlib.import_module(f"{_package()}.scoring")
_f1_scoring = importlib.import_module(f"{_package()}.f1_scoring")

# The `!function utils.<name>` references of the task YAMLs, besides the loaders above.
process_results = _scoring.process_results
process_spatial_reasoning = _scoring.process_spatial_reasoning
process_address_parsing = _f1_scoring.process_address_parsing
process_location_ner = _f1_scoring.process_location_ner
process_ner_locations = _f1_scoring.process_ner_locations
micro_f1 = _f1_scoring.micro_f1
micro_precision = _f1_scoring.micro_precision
micro_recall = _f1_scoring.micro_recall

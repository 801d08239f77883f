"""The real conf/ tree composes, and the composed config is what a run relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config.resolvers import CONFIG_DIR, PROJECT_ROOT, flatten


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_defaults_compose_to_the_offline_default_job(compose_cfg):
    cfg = compose_cfg()
    assert cfg.category.name == "text_geospatial"
    assert cfg.model.name == "smollm2_135m"
    assert cfg.engine.kind == "auto"
    assert list(cfg.category.datasets) == [
        "spatial_reasoning",
        "coordinate_processing",
        "address_parsing",
        "location_ner",
        "ner_locations",
    ]
    assert cfg.category.datasets.coordinate_processing.tasks == ["coordinate_processing"]
    assert "qwen25_7b" in cfg.category.models


CATEGORIES = {  # name: (label, models, datasets)
    "coding": ("CODING_SPECIALISTS", 5, 3),
    "math": ("MATHEMATICAL_REASONING", 5, 2),
    "science": ("SCIENTIFIC_RESEARCH", 3, 2),
    "efficiency": ("EFFICIENCY_OPTIMIZED", 3, 3),
    "general": ("GENERAL_PURPOSE", 7, 4),
    "safety": ("SAFETY_ALIGNMENT", 3, 2),
    "text_geospatial": ("TEXT_GEOSPATIAL", 4, 5),
    "multilingual": ("MULTILINGUAL", 3, 2),
    "long_context": ("LONG_CONTEXT", 3, 2),
}


@pytest.mark.parametrize("name", sorted(CATEGORIES))
def test_the_nine_categories_and_their_sizes(compose_cfg, name):
    label, n_models, n_datasets = CATEGORIES[name]
    category = compose_cfg(f"category={name}").category
    assert (category.label, len(category.models), len(category.datasets)) == (label, n_models, n_datasets)
    assert category.description
    assert len(set(category.models)) == n_models


def test_the_catalog_has_exactly_the_nine_categories():
    assert options("category") == sorted(CATEGORIES)


@pytest.mark.parametrize(
    "group", ["model", "engine", "category", "dataset", "paths", "tracking", "debug", "experiment"]
)
def test_every_option_of_every_group_composes(compose_cfg, group):
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        # A dataset composes into a category the way a category's defaults list puts it there.
        override = f"+dataset@category.datasets.extra={option}" if group == "dataset" else f"{group}={option}"
        cfg = compose_cfg(override)
        flatten(cfg)  # resolves every interpolation


def test_model_names_match_their_files(compose_cfg):
    for option in options("model"):
        assert compose_cfg(f"model={option}").model.name == option


def test_models_state_the_facts_selection_needs(compose_cfg):
    models = [compose_cfg(f"model={option}").model for option in options("model")]
    for model in models:
        assert model.params_b > 0 and model.max_model_len > 0 and model.repo_id
        # Custom code runs only where the model really needs it.
        assert not model.trust_remote_code or model.name == "deepseek_coder_v2_lite"
    assert any(m.params_b >= 70 for m in models), "a 70B-class model for the distributed engine"
    assert {m.quantization for m in models} >= {"awq", "fp8"}


def test_paths_are_absolute_and_anchored_at_the_checkout(compose_cfg):
    cfg = compose_cfg()
    assert Path(cfg.paths.root) == PROJECT_ROOT
    assert cfg.tracking.uri == f"sqlite:///{PROJECT_ROOT}/outputs/mlflow.db"
    assert Path(cfg.paths.tasks_dir).is_dir()


def test_hydra_job_name_and_output_dirs_live_under_outputs(compose_cfg):
    cfg = compose_cfg("paths.output_dir=/tmp/somewhere", hydra=True)
    assert cfg.hydra.job.name == "runner"
    assert cfg.hydra.run.dir.startswith("/tmp/somewhere/runs/")
    assert cfg.hydra.sweep.dir.startswith("/tmp/somewhere/multirun/")
    assert cfg.hydra.run.dir.endswith("_text_geospatial_smollm2_135m")


def test_category_models_have_configs(compose_cfg):
    for category in options("category"):
        cfg = compose_cfg(f"category={category}")
        missing = [m for m in cfg.category.models if m not in options("model")]
        assert not missing, f"conf/category/{category}.yaml names models without a config: {missing}"


# --- seeds: lm-eval's four, read as `lm_eval --seed` reads them ---


@pytest.mark.parametrize("value", ["42", "0,1234,1234,1234", "1,None,3,4", "5,6,7", "none"])
def test_seed_maps_onto_lm_evals_four_as_its_cli_does(value):
    from lm_eval._cli.utils import _int_or_none_list_arg_type

    from runner.config.schema import seeds

    assert list(seeds(value)) == _int_or_none_list_arg_type(3, 4, "0,1234,1234,1234", value)


def test_the_default_seeds_are_lm_evals_and_the_engines_get_the_torch_seed(compose_cfg):
    from runner.config.schema import LM_EVAL_SEEDS, seeds

    cfg = compose_cfg()
    assert seeds(cfg.seed) == (0, 1234, 1234, 1234) == LM_EVAL_SEEDS
    assert cfg.engine.cpu.seed == cfg.engine.gpu.seed == cfg.engine.hf.seed == 1234
    cfg = compose_cfg("seed=[1,2,3,4]")
    assert seeds(cfg.seed) == (1, 2, 3, 4) and cfg.engine.cpu.seed == 3
    assert compose_cfg("seed=42").engine.hf.seed == 42


@pytest.mark.parametrize("value", ["abc", "[1,2]", "[1,2,3,4,5]"])
def test_a_seed_lm_eval_would_refuse_is_one_clear_error(value, compose_cfg):
    from runner.config.schema import ConfigError, validate

    with pytest.raises(ConfigError, match=r"^seed="):
        validate(compose_cfg(f"seed={value}"))


def test_debug_fast_is_a_tiny_uncached_job_and_the_command_line_still_wins(compose_cfg):
    cfg = compose_cfg("debug=fast")
    assert (cfg.model.name, cfg.engine.kind, cfg.limit, cfg.cache) == ("tiny_llama", "hf", 2, False)
    assert cfg.tracking.system_metrics is False
    assert compose_cfg("debug=fast", "limit=5", "model=smollm2_135m").limit == 5
    assert compose_cfg("debug=fast", "model=smollm2_135m").model.name == "smollm2_135m"
    assert compose_cfg().limit is None and compose_cfg().cache is True  # without it, nothing changes


def _stated_in_the_schema_too(node: dict, cls: type, where: str) -> list[str]:
    """Keys a YAML file sets whose schema field also has a default (a value written in two places)."""
    import dataclasses
    import typing

    from omegaconf import MISSING

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    twice = []
    for key, value in node.items():
        if key in ("defaults", "hydra") or key not in fields:
            continue  # the defaults list, Hydra's own settings, and groups (category, model...) composed in
        field = fields[key]
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            twice += _stated_in_the_schema_too(value, hints[key], f"{where}{key}.")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            continue
        elif field.default is dataclasses.MISSING or field.default != MISSING:
            twice.append(f"{where}{key}")
    return twice


def test_each_default_is_stated_once_in_conf_not_again_in_the_schema():
    from omegaconf import OmegaConf

    from runner.config import schema

    files = {
        CONFIG_DIR / "config.yaml": (schema.RunnerConfig, ""),
        **{p: (schema.PathsConfig, "paths.") for p in (CONFIG_DIR / "paths").glob("*.yaml")},
        **{p: (schema.TrackingConfig, "tracking.") for p in (CONFIG_DIR / "tracking").glob("*.yaml")},
        **{p: (schema.EngineConfig, "engine.") for p in (CONFIG_DIR / "engine").glob("*.yaml")},
    }
    assert len(files) >= 9
    twice = []
    for path, (cls, where) in files.items():
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        twice += [f"{path.relative_to(CONFIG_DIR)}: {key}" for key in _stated_in_the_schema_too(node, cls, where)]
    assert twice == [], "set in conf/ and defaulted in runner/config/schema.py; keep one (the YAML, schema MISSING)"

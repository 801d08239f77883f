"""Comparison report of evaluation runs recorded in MLflow: score against throughput, per dataset.

`write_report` collects the runs of some experiments (or of one Hydra sweep: runner/reporting/runs.py), draws one
score-vs-output-tokens/s panel per dataset with its Pareto front and 95% intervals, writes `report.png`, a
self-contained `report.html` and `comparisons.json` (runner/reporting/compare.py: intervals and paired tests on
the per-doc scores), and logs them to MLflow as a run tagged `runner.report=true`, which later reports skip.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
import textwrap
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runner.reporting import compare
from runner.reporting.runs import REPORT_TAG, RunRow, collect_runs, same_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

_MISSING = "—"


# --------------------------------------------------------------------------------------------------- the front


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates, maximising both coordinates.

    A point is dominated by one at least as good in both coordinates and better in one; equal points do not
    dominate each other, so duplicates on the front are all kept. Points with a NaN coordinate are never on it.
    """
    valid = [i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))]
    front = []
    for i in valid:
        xi, yi = points[i]
        dominated = any(
            points[j][0] >= xi and points[j][1] >= yi and (points[j][0] > xi or points[j][1] > yi) for j in valid
        )
        if not dominated:
            front.append(i)
    return front


def _plottable(row: RunRow, dataset: str) -> bool:
    return row.finished and row.output_tokens_per_s is not None and dataset in row.scores


def _point(row: RunRow, dataset: str) -> tuple[float, float]:
    """(output tokens/s, score) of a run `_plottable` kept."""
    assert row.output_tokens_per_s is not None
    return row.output_tokens_per_s, row.scores[dataset]


def _fronts(rows: list[RunRow], datasets: list[str]) -> dict[str, set[str]]:
    """dataset -> run ids on its Pareto front, among the runs that can be plotted for it."""
    fronts = {}
    for dataset in datasets:
        candidates = [r for r in rows if _plottable(r, dataset)]
        points = [(r.output_tokens_per_s or 0.0, r.scores[dataset]) for r in candidates]
        fronts[dataset] = {candidates[i].run_id for i in pareto_front(points)}
    return fronts


# --------------------------------------------------------------------------------------------------- the report


def build_report(
    rows: list[RunRow], out_dir: Path, title: str, *, tracking_uri: str | None = None
) -> tuple[Path, Path]:
    """Write `report.png` (score vs output tokens/s per dataset), `comparisons.json` (intervals and paired
    tests, runner/reporting/compare.py; per-sample tables read from the run folders, else from `tracking_uri`)
    and `report.html`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = sorted({d for r in rows for d in r.scores})
    fronts = _fronts(rows, datasets)
    several_engines = len({r.engine for r in rows}) > 1
    labels = {r.run_id: _label(r, several_engines) for r in rows}
    notes = _left_out(rows, labels)
    comparisons = compare.compare_runs(rows, labels, tracking_uri)
    compare.write_json(comparisons, out_dir / "comparisons.json")
    # Error bars only where the interval is one for the plotted (logged) score itself.
    bars = {
        (c.dataset, i.run_id): (i.low, i.high)
        for c in comparisons
        for i in c.runs
        if i.matches_score and i.low is not None and i.high is not None
    }

    png = out_dir / "report.png"
    _plot(rows, datasets, fronts, labels, notes, bars, title, png)
    page = out_dir / "report.html"
    cached = sorted({labels[r.run_id] for r in rows for d in datasets if _plottable(r, d) and r.from_cache})
    legend = (
        f'<p class="legend cached">Hollow markers, {_CACHED}: {html.escape(", ".join(cached))}.</p>' if cached else ""
    )
    body = _html(rows, datasets, fronts, notes, title, png.read_bytes(), legend, compare.html_section(comparisons))
    page.write_text(body, encoding="utf-8")
    return png, page


def _label(row: RunRow, with_engine: bool) -> str:
    name = row.model or row.run_name
    return f"{name} ({row.engine or '?'})" if with_engine else name


def _left_out(rows: list[RunRow], labels: dict[str, str]) -> list[str]:
    """Why each run that is in the table is missing from the plot."""
    notes = []
    for r in rows:
        name = f"{labels[r.run_id]} [{r.run_name}]"
        if not r.finished:
            notes.append(f"{name}: run {r.status}")
        elif r.output_tokens_per_s is None:
            notes.append(
                f"{name}: no throughput recorded (every answer came from the response cache, and the cache kept no "
                "measurement of the engine passes that generated them)"
            )
        elif not r.scores:
            notes.append(f"{name}: no dataset score recorded")
    return notes


_FRONT_COLOR, _OTHER_COLOR = "#d62728", "#7f7f7f"
_CACHED = "throughput from the response cache (measured when the answers were generated)"
_EXPLANATION = (
    "Red stars: Pareto front, the runs no other run matches on both score and output tokens/s while beating it on "
    "one (higher is better for both); the red step line bounds the region they dominate. Grey dots: the other "
    f"finished runs. Hollow markers: {_CACHED}. Vertical bars: 95% confidence interval of the score, where the "
    "per-doc scores give one."
)


def _plot(
    rows: list[RunRow],
    datasets: list[str],
    fronts: dict[str, set[str]],
    labels: dict[str, str],
    notes: list[str],
    bars: dict[tuple[str, str], tuple[float, float]],
    title: str,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI backend picked up from the environment
    from matplotlib.figure import Figure

    panels = datasets or [""]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    text = _caption(notes, width=78 * ncols)  # caption characters per line: about the figure's width at fontsize 8
    footer_in = 0.5 + 0.15 * (text.count("\n") + 1)
    # A Figure without pyplot: nothing registered globally, nothing left open after an exception.
    fig = Figure(figsize=(5.4 * ncols, 4.2 * nrows + footer_in + 0.4), dpi=110, layout="constrained")
    fig.suptitle(title, fontsize=13)
    # The legend and caption get a grid row of their own, so the layout engine keeps them clear of the panels.
    grid = fig.add_gridspec(nrows + 1, ncols, height_ratios=[4.2] * nrows + [footer_in])
    axes = [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(len(panels))]
    footer = fig.add_subplot(grid[nrows, :])
    footer.axis("off")

    log_x = _log_x(rows)
    for ax, dataset in zip(axes, panels, strict=True):
        plotted = [r for r in rows if dataset and _plottable(r, dataset)]
        if plotted:
            _draw_panel(ax, dataset, plotted, fronts[dataset], labels, bars, log_x)
        else:
            _draw_empty_panel(ax, dataset)
    any_cached = any(r.from_cache for d in datasets for r in rows if _plottable(r, d))
    _draw_footer(footer, any_cached, text)
    fig.savefig(path, format="png")


def _caption(notes: list[str], width: int) -> str:
    """The explanation of the markers, then the runs left out of the plot, wrapped at `width` characters."""
    caption = [_EXPLANATION] + (["Not plotted: " + "; ".join(notes) + "."] if notes else [])
    return "\n".join(textwrap.fill(line, width) for line in caption)


def _log_x(rows: list[RunRow]) -> bool:
    """Whether the speed axis is logarithmic: the finished runs' output tokens/s span 20x or more."""
    speeds = [r.output_tokens_per_s for r in rows if r.finished and r.output_tokens_per_s is not None]
    # CPU and GPU engines differ by orders of magnitude in tokens/s; a linear axis would squash the slow ones.
    return bool(speeds) and min(speeds) > 0 and max(speeds) / min(speeds) >= 20


def _draw_empty_panel(ax: Axes, dataset: str) -> None:
    ax.set_title(dataset or "no dataset scores recorded")
    ax.text(0.5, 0.5, "no run to plot", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_panel(
    ax: Axes,
    dataset: str,
    plotted: list[RunRow],
    front_ids: set[str],
    labels: dict[str, str],
    bars: dict[tuple[str, str], tuple[float, float]],
    log_x: bool,
) -> None:
    """One dataset's panel: the runs' error bars, the front's step line, then each run's marker and label."""
    for r in plotted:
        if (dataset, r.run_id) in bars:
            low, high = bars[dataset, r.run_id]
            speed, score = _point(r, dataset)
            yerr = [[max(0.0, score - low)], [max(0.0, high - score)]]
            ax.errorbar(speed, score, yerr=yerr, fmt="none", ecolor="0.6", capsize=3, zorder=1)
    front = [r for r in plotted if r.run_id in front_ids]
    steps = sorted((_point(r, dataset) for r in front), key=lambda p: (p[0], -p[1]))
    # where="pre": between two front points the boundary sits at the faster point's score.
    ax.step([p[0] for p in steps], [p[1] for p in steps], where="pre", color=_FRONT_COLOR, linewidth=1.5, zorder=2)
    for r in plotted:
        _draw_run(ax, _point(r, dataset), labels[r.run_id], r.run_id in front_ids, r.from_cache)
    if log_x:
        ax.set_xscale("log")
    ax.margins(x=0.2, y=0.15)  # room for the labels at the edges
    ax.set_title(dataset)
    ax.set_xlabel("output tokens/s" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("score")
    ax.grid(True, alpha=0.3)


def _draw_run(ax: Axes, point: tuple[float, float], label: str, on_front: bool, from_cache: bool) -> None:
    """A run's marker (a star on the front, a dot off it; hollow when its throughput is the cache's) and label."""
    color = _FRONT_COLOR if on_front else _OTHER_COLOR
    size, marker = (160, "*") if on_front else (36, "o")
    zorder = 4 if on_front else 3
    if from_cache:  # hollow: a throughput measured earlier, by the passes that generated the answers
        ax.scatter(
            [point[0]],
            [point[1]],
            zorder=zorder,
            s=size,
            marker=marker,
            facecolors="none",
            edgecolors=color,
            linewidths=1.5,
        )
    else:
        edge = "black" if on_front else color
        ax.scatter(
            [point[0]], [point[1]], zorder=zorder, s=size, marker=marker, color=color, edgecolors=edge, linewidths=0.5
        )
    ax.annotate(
        label,
        point,
        xytext=(6, 4),
        textcoords="offset points",
        fontsize=8,
        fontweight="bold" if on_front else "normal",
    )


def _draw_footer(footer: Axes, any_cached: bool, text: str) -> None:
    """The legend of the markers (with the hollow one where a plotted run has it), over the caption."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="*", markersize=12, color=_FRONT_COLOR, markeredgecolor="black", label="Pareto front"),
        Line2D([], [], marker="o", linestyle="none", color=_OTHER_COLOR, label="other finished run"),
    ]
    if any_cached:
        hollow = Line2D(
            [],
            [],
            marker="o",
            linestyle="none",
            label=_CACHED,
            markerfacecolor="none",
            markeredgecolor=_OTHER_COLOR,
            markeredgewidth=1.5,
        )
        handles.append(hollow)
    footer.legend(handles=handles, loc="upper left", ncols=len(handles), frameon=False, borderaxespad=0)
    footer.text(0, 0, text, transform=footer.transAxes, ha="left", va="bottom", fontsize=8, color="0.25")


def _fmt(value: float | None, digits: int, unit: str = "") -> str:
    return _MISSING if value is None else f"{value:.{digits}f}{unit}"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
.meta, .legend, .notes { color: #555; font-size: 0.9rem; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; margin: 1rem 0; }
table { border-collapse: collapse; font-size: 0.85rem; margin-top: 0.5rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.55rem; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.star { text-align: center; color: #d62728; }
td.front-score { font-weight: bold; }
tr.front { background: #fff6f0; }
td.status-failed, td.status-killed { color: #b00020; font-weight: bold; }
td.status-running { color: #a06000; }
code { font-size: 0.8rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; } h3 { font-size: 1rem; margin: 1.2rem 0 0.3rem; }
td.note { white-space: normal; color: #555; min-width: 16rem; } td.sig { font-weight: bold; color: #0a6b2d; }
"""


_SOURCES = {
    "engine": "engine",
    "response_cache": "response cache (measured when the answers were generated)",
    "mixed": "engine, some answers cached",
}


def _html(
    rows: list[RunRow],
    datasets: list[str],
    fronts: dict[str, set[str]],
    notes: list[str],
    title: str,
    png: bytes,
    legend: str = "",
    section: str = "",
) -> str:
    e = html.escape
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    experiments = sorted({r.experiment for r in rows})
    image = base64.b64encode(png).decode("ascii")
    return "\n".join(
        [
            f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>',
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{e(title)}</h1>",
            f'<p class="meta">Generated {e(generated)} · {len(rows)} runs · '
            f"experiments: {e(', '.join(experiments))}</p>",
            f'<img src="data:image/png;base64,{image}" alt="{e("Score against output tokens/s: " + title)}">',
            f'<p class="legend">{e(_EXPLANATION)}</p>',
            legend,
            _notes_html(notes),
            '<p class="legend">★ marks runs on the Pareto front of at least one dataset; bold scores are on that '
            "dataset's front. Peak memory is GPU memory where it was measured, else the process's peak RSS.</p>",
            "<table>",
            "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in _table_header(datasets)) + "</tr></thead>",
            "<tbody>",
            *(_table_row(r, datasets, fronts) for r in rows),
            "</tbody>\n</table>",
            section,
            "</body>\n</html>\n",
        ]
    )


def _notes_html(notes: list[str]) -> str:
    """The runs left out of the plot, and why; nothing when every run is in it."""
    if not notes:
        return ""
    return (
        '<p class="notes">Not plotted:</p><ul class="notes">'
        + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        + "</ul>"
    )


def _table_header(datasets: list[str]) -> list[str]:
    header = ["★", "experiment", "run name", "model", "engine", "status"]
    header += [f"{d} score" for d in datasets]
    return header + ["output tok/s", "throughput from", "latency p50 (s)", "peak memory (GiB)", "wall (s)", "run id"]


def _table_row(r: RunRow, datasets: list[str], fronts: dict[str, set[str]]) -> str:
    """A run's row of the table: marked, and its scores bold, where it is on a dataset's Pareto front."""
    e = html.escape
    on = [d for d in datasets if r.run_id in fronts[d]]
    front_of = e("Pareto front: " + ", ".join(on))
    cells = [f'<td class="star" title="{front_of}">★</td>' if on else '<td class="star"></td>']
    cells += [f"<td>{e(v or _MISSING)}</td>" for v in (r.experiment, r.run_name, r.model, r.engine)]
    cells.append(f'<td class="status-{e(r.status.lower())}">{e(r.status)}</td>')
    for d in datasets:
        css = "num front-score" if d in on else "num"
        cells.append(f'<td class="{css}">{e(_fmt(r.scores.get(d), 4))}</td>')
    memory = _fmt(r.peak_memory_gib, 2, f" {r.memory_kind}" if r.memory_kind else "")
    cells.append(f'<td class="num">{e(_fmt(r.output_tokens_per_s, 1))}</td>')
    source = _SOURCES.get(r.throughput_source, r.throughput_source) or _MISSING
    cells.append(f'<td class="source-{e(r.throughput_source or "none")}">{e(source)}</td>')
    cells += [f'<td class="num">{e(v)}</td>' for v in (_fmt(r.latency_p50_s, 2), memory, _fmt(r.wall_s, 1))]
    cells.append(f"<td><code>{e(r.run_id)}</code></td>")
    row_class = ' class="front"' if on else ""
    return f'<tr{row_class} data-run-id="{e(r.run_id)}">' + "".join(cells) + "</tr>"


# --------------------------------------------------------------------------------------------------- MLflow


def log_report(
    png: Path, html: Path, tracking_uri: str, experiment: str, *, sweep_dir: str | os.PathLike[str] | None = None
) -> str:
    """Log both files, and `comparisons.json` where it sits beside `html`, as artifacts of a new run `report` (or
    `report/<sweep folder>`) in `experiment`.

    The run is created and ended through MlflowClient, so an active fluent run of the caller is left alone.
    Returns the run id; the run ends FINISHED, or FAILED if uploading an artifact fails.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        # Creating it here would put its artifacts under MLflow's default root, away from the runs it compares.
        raise ValueError(f"MLflow experiment {experiment!r} does not exist in {tracking_uri}")
    tags: dict[str, str] = {REPORT_TAG: "true"}
    run_name = "report"
    if sweep_dir is not None:
        tags["sweep_dir"] = same_path(sweep_dir)
        run_name = f"report/{os.path.basename(tags['sweep_dir'])}"
    run_id: str = client.create_run(found.experiment_id, tags=tags, run_name=run_name).info.run_id
    try:
        comparisons = html.with_name("comparisons.json")
        for path in (png, html, *([comparisons] if comparisons.exists() else [])):
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def write_report(
    tracking_uri: str,
    out_dir: str | os.PathLike[str],
    *,
    experiments: list[str] | None = None,
    sweep_dir: str | os.PathLike[str] | None = None,
    title: str | None = None,
    log: bool = True,
) -> tuple[Path, Path] | None:
    """Collect the runs, write `report.png`, `report.html` and `comparisons.json` into `out_dir`, log them to MLflow.

    With `log`, the report becomes a run in each experiment its runs come from. None when no run matches.
    """
    rows = collect_runs(tracking_uri, experiments=experiments, sweep_dir=sweep_dir)
    if not rows:
        logger.warning(
            "No MLflow runs to report (store %s, experiments %s, sweep %s).",
            tracking_uri,
            ", ".join(experiments) if experiments is not None else "all",
            sweep_dir or "any",
        )
        return None
    if title is None:
        scope = (
            os.path.basename(os.path.normpath(os.fspath(sweep_dir)))
            if sweep_dir is not None
            else ", ".join(sorted({r.experiment for r in rows}))
        )
        title = f"Evaluation report: {scope}"
    png, page = build_report(rows, Path(out_dir), title, tracking_uri=tracking_uri)
    if log:
        for experiment in sorted({r.experiment for r in rows}):
            run_id = log_report(png, page, tracking_uri, experiment, sweep_dir=sweep_dir)
            logger.info("Report logged to MLflow experiment %r, run %s.", experiment, run_id)
    return png, page

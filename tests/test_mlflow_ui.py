"""The MLflow UI shows a sweep's runs and their accuracy metric.

A real `mlflow server` serves the store a real sweep wrote (tests/conftest.py: Sweep; one experiment per
category, one run per model/category job), and headless Chromium renders its React UI: the experiment's
runs table must list every run of the sweep (and no run the store lacks), and each finished run's page
must show the accuracy metric with the value stored for that run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import MlflowServer, free_port

pytestmark = pytest.mark.slow

METRIC = "spatial_reasoning/score"
CATEGORY = "text_geospatial"
ABSENT_RUN = f"not_in_the_sweep/{CATEGORY}"  # proves the page check can fail

PAGE_TIMEOUT_S = 60
# Virtual time, not wall time: it only advances while no request is pending, so the dump waits for the
# UI's API calls however slow the server is, and timers (debounces, polling) fire without real waiting.
VIRTUAL_TIME_BUDGET_MS = 20_000


@dataclass(frozen=True)
class SweepStore:
    tracking_uri: str
    db_path: Path
    artifacts_dir: Path
    experiment_name: str
    run_names: list[str]
    metric: str


@pytest.fixture
def sweep_store(sweep) -> SweepStore:
    """The store a real sweep left behind (tests/conftest.py: Sweep): its finished and failed runs, its report."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.tracking_uri)
    experiment = client.get_experiment_by_name(CATEGORY)
    run_names = [run.info.run_name for run in client.search_runs([experiment.experiment_id])]
    db_path = sweep.out / "mlflow.db"
    return SweepStore(sweep.tracking_uri, db_path, sweep.out / "mlartifacts", CATEGORY, run_names, METRIC)


def _stop(proc: subprocess.Popen) -> None:
    """End Chromium and every process it started (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=10)


@pytest.fixture
def mlflow_server(sweep_store: SweepStore, tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on loopback over the store; yields its base URL, always stopped after."""
    server = MlflowServer(
        sweep_store.tracking_uri, sweep_store.artifacts_dir, free_port(), tmp_path / "mlflow-server.log"
    )
    try:
        yield server.url
    finally:
        server.stop()


class _Page(HTMLParser):
    """The rendered DOM reduced to what a user reads: its text nodes, and each table row as its cells' text nodes."""

    _SKIP = {"script", "style", "noscript", "svg"}
    _VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.rows: list[list[tuple[str, ...]]] = []
        self._stack: list[tuple[str, str | None]] = []  # (tag, role) of the open elements
        self._row: list[tuple[str, ...]] | None = None
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._VOID:
            return
        role = dict(attrs).get("role") or {"tr": "row", "td": "cell", "th": "cell"}.get(tag)
        self._stack.append((tag, role))
        if role == "row":
            self._row = []
        elif role in ("cell", "gridcell", "rowheader") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        while self._stack:  # tolerate unclosed elements: pop up to the matching tag
            open_tag, role = self._stack.pop()
            if role == "row" and self._row is not None:
                self.rows.append(self._row)
                self._row = None
            elif role in ("cell", "gridcell", "rowheader") and self._cell is not None and self._row is not None:
                self._row.append(tuple(self._cell))
                self._cell = None
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if not text or any(tag in self._SKIP for tag, _ in self._stack):
            return
        self.texts.append(text)
        if self._cell is not None:
            self._cell.append(text)

    def summary(self) -> str:
        return " | ".join(self.texts)[:3000]


def _render(chromium: str, url: str, work_dir: Path) -> _Page:
    """Load URL in headless Chromium, let the React app fetch and render, and parse the resulting DOM."""
    work_dir.mkdir(parents=True)
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm; Chromium then crashes
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-breakpad",
        "--disable-features=AutofillServerCommunication,OptimizationHints,MediaRouter,Translate",
        "--no-first-run",
        "--no-default-browser-check",
        "--no-pings",
        # Nothing beyond loopback: every host but 127.0.0.1, IP literals included, fails to resolve, which also
        # stops Chromium's own background calls to Google services.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={work_dir / 'profile'}",
        "--window-size=1920,1080",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        "--run-all-compositor-stages-before-draw",
        "--dump-dom",
        url,
    ]
    # HOME and XDG dirs in the test's tmp dir: Chromium writes its NSS database and crash reports there.
    env = {
        **os.environ,
        "HOME": str(work_dir),
        "XDG_CONFIG_HOME": str(work_dir / "config"),
        "XDG_CACHE_HOME": str(work_dir / "cache"),
    }
    stderr_path = work_dir / "chromium.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
        )
    try:
        html, _ = proc.communicate(timeout=PAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Chromium did not render {url} in {PAGE_TIMEOUT_S}s:\n{stderr_path.read_text(errors='replace')}")
    finally:
        _stop(proc)
    if proc.returncode != 0 or not html:
        pytest.fail(f"Chromium exited {proc.returncode} on {url}:\n{stderr_path.read_text(errors='replace')[-5000:]}")
    return _Page(html.decode("utf-8", errors="replace"))


def _js_number(value: float) -> str:
    """How the run page prints a metric: JavaScript's Number#toString (shortest round-trip digits)."""
    if not math.isfinite(value):
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN")
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    if 1e-6 <= abs(value) < 1e21:
        return format(Decimal(repr(value)), "f")
    mantissa, exponent = repr(value).split("e")
    return f"{mantissa}e{int(exponent):+d}"


def _api(base_url: str, path: str, body: dict | None = None) -> dict:
    """MLflow's REST API: GET with no body, else POST the body as JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base_url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def chromium() -> str:
    """Chromium's path; requested before the server, so a machine without it skips without starting one."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip(
            "Chromium is not installed (scripts/install_debian_package.sh installs Debian's chromium package as root); "
            "the MLflow UI test needs it"
        )
    return path


def test_ui_shows_the_sweeps_runs_and_their_metric(
    chromium: str, sweep_store: SweepStore, mlflow_server: str, tmp_path: Path
) -> None:
    # What the UI should show comes from the server's API, so the same checks hold for any sweep's store.
    query = urllib.parse.urlencode({"experiment_name": sweep_store.experiment_name})
    experiment_id = _api(mlflow_server, f"experiments/get-by-name?{query}")["experiment"]["experiment_id"]
    found = _api(mlflow_server, "runs/search", {"experiment_ids": [experiment_id], "max_results": 1000})["runs"]
    runs = {run["info"]["run_name"]: run for run in found}
    assert set(runs) == set(sweep_store.run_names)  # names, not runs: a rebuilt report repeats its name
    assert ABSENT_RUN not in runs

    runs_url = f"{mlflow_server}/#/experiments/{experiment_id}/runs"
    # The jobs that scored (the sweep's failed job and its report run have no accuracy to show).
    scored = {
        name: run
        for name, run in runs.items()
        if any(m["key"] == sweep_store.metric for m in run["data"].get("metrics", []))
    }
    assert len(scored) >= 2, sorted(runs)
    run_urls = {
        name: f"{mlflow_server}/#/experiments/{experiment_id}/runs/{run['info']['run_id']}"
        for name, run in scored.items()
    }
    # One Chromium per page, a few side by side: each page's wall time is mostly the React app's start-up.
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs_future = pool.submit(_render, chromium, runs_url, tmp_path / "chromium-runs")
        run_futures = {
            name: pool.submit(_render, chromium, url, tmp_path / f"chromium-run-{i}")
            for i, (name, url) in enumerate(run_urls.items())
        }
        runs_page = runs_future.result()
        run_pages = {name: future.result() for name, future in run_futures.items()}

    # The runs table: a row for each run of the sweep, and nothing anywhere on the page for a run it lacks.
    in_rows = {text for row in runs_page.rows for cell in row for text in cell}
    for name in sweep_store.run_names:
        assert name in in_rows, f"run {name} not in the runs table of {runs_url}: {runs_page.summary()}"
    assert ABSENT_RUN not in runs_page.texts, f"{ABSENT_RUN} is not in the store but shown on {runs_url}"

    # Each run's page: its name, and a metrics-table row pairing the metric with that run's stored value.
    for name, run in scored.items():
        run_page = run_pages[name]
        stored = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        assert sweep_store.metric in stored, f"run {name} has no {sweep_store.metric} in the store"
        expected = [(sweep_store.metric,), (_js_number(stored[sweep_store.metric]),)]
        assert name in run_page.texts, f"run page {run_urls[name]} does not name {name}: {run_page.summary()}"
        assert expected in run_page.rows, (
            f"run page {run_urls[name]} has no metrics row {expected}; rows: {run_page.rows}; "
            f"text: {run_page.summary()}"
        )

#!/usr/bin/env bash
# Ready-made Hydra sweeps (one job per combination, one MLflow run per job). Extra arguments are
# passed through as Hydra overrides.
#   ./multirun.sh category coding limit=20   every model the category lists (their weights must be present)
#   ./multirun.sh custom model=smollm2_135m limit=5,20
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}
preset=${1:-help}
shift || true

case "$preset" in
  category) name=${1:?category name}; shift; exec "$PY" -m runner -m "category=$name" "$@" ;;
  custom) exec "$PY" -m runner -m "$@" ;;
  *)
    sed -n '2,5p' "$0"
    [ "$preset" = help ] || exit 2 ;;
esac

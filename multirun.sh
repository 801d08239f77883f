#!/usr/bin/env bash
# Ready-made Hydra sweeps: one job per combination, one MLflow run per job, a comparison report at the
# end of each sweep (outputs/multirun/<date>/<time>/report/). Extra arguments are Hydra overrides,
# passed through to every sweep:
#   ./multirun.sh ready [overrides]         every category that can run here, with its models whose weights are here
#   ./multirun.sh model NAME [overrides]    one model across every category that has a dataset ready here
#   ./multirun.sh engines [overrides]       vLLM vs the transformers reference engine on the default model
#   ./multirun.sh category NAME [overrides] every model a category lists (their weights must be present)
#   ./multirun.sh custom OVERRIDES...       any sweep: ./multirun.sh custom model=a,b category=math limit=20
# Example: ./multirun.sh ready limit=20
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}
preset=${1:-help}
shift || true

# Each preset is a Hydra sweep; the fixed ones are experiment configs (conf/experiment/).
case "$preset" in
  ready) exec "$PY" -m runner -m experiment=ready "$@" ;;
  model) name=${1:?model name}; shift; exec "$PY" -m runner -m experiment=ready "model=$name" "$@" ;;
  engines) exec "$PY" -m runner -m experiment=engines "$@" ;;
  category) name=${1:?category name}; shift; exec "$PY" -m runner -m "category=$name" "$@" ;;
  custom) exec "$PY" -m runner -m "$@" ;;
  *)
    sed -n '2,10p' "$0"
    [ "$preset" = help ] || exit 2 ;;
esac

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

# Categories (and their ready models) as `mode=list output=json` reports them: "category model,model" lines.
ready_categories() {
  "$PY" -m runner mode=list output=json 2>/dev/null | "$PY" -c '
import json, sys
for category in json.load(sys.stdin):
    models = [m for m, s in category["models"].items() if s["ok"]]
    if any(s["ok"] for s in category["datasets"].values()):
        print(category["name"], ",".join(models) or "-")
'
}

status=0
case "$preset" in
  ready)
    # Each category with only the models whose weights are here: a model list per category, one sweep each.
    while read -r category models; do
      [ "$models" = "-" ] && { echo "skipping $category: none of its models' weights are here"; continue; }
      "$PY" -m runner -m "category=$category" "model=$models" "$@" || status=1
    done < <(ready_categories)
    exit $status ;;
  model)
    name=${1:?model name}; shift
    categories=$(ready_categories | cut -d' ' -f1 | paste -sd, -)
    exec "$PY" -m runner -m "model=$name" "category=$categories" "$@" ;;
  engines) exec "$PY" -m runner -m model=smollm2_135m engine=auto,hf "$@" ;;
  category) name=${1:?category name}; shift; exec "$PY" -m runner -m "category=$name" "$@" ;;
  custom) exec "$PY" -m runner -m "$@" ;;
  *)
    sed -n '2,10p' "$0"
    [ "$preset" = help ] || exit 2 ;;
esac

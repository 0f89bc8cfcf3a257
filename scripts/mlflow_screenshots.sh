#!/usr/bin/env bash
# Screenshots of the MLflow UI (docs/img/): the runs table of an experiment and the compare view of its
# ReLU reference run and SNN runs, from a tracking store the pipeline wrote (the toy repository of
# tests/test_pipeline_e2e.py, or this project's mlflow.db). Needs Chromium (tasks.sh test installs it).
#
#   scripts/mlflow_screenshots.sh sqlite:////tmp/toy/mlflow.db tiny_fc2 [out_dir]
set -euo pipefail
STORE=$1 EXP=$2 OUT=${3:-docs/img}
PY=${PYTHON:-.venv/bin/python}
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$OUT"
"$(dirname "$PY")/mlflow" server --backend-store-uri "$STORE" --host 127.0.0.1 --port "$PORT" --workers 1 \
    >/tmp/mlflow-screenshots.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
read -r EXP_ID RUNS < <(MLFLOW_TRACKING_URI="$STORE" "$PY" - "$EXP" <<'PY'
import json, sys
from mlflow import MlflowClient
client = MlflowClient()
exp = client.get_experiment_by_name(sys.argv[1])
runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
pick = {}
for r in runs:  # the latest run of each core stage: the ReLU reference and its SNN runs
    stage = r.data.tags.get("dvc_stage", "").split("@")[0]
    if stage in ("pretrain", "convert", "finetune", "evaluate") and stage not in pick:
        pick[stage] = r.info.run_id
print(exp.experiment_id, json.dumps(list(pick.values()), separators=(",", ":")))
PY
)
shot() {  # url file width,height
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$3" \
        --virtual-time-budget=20000 --screenshot="$2" "$1" >/dev/null 2>&1
}
shot "http://127.0.0.1:$PORT/#/experiments/$EXP_ID/runs" "$OUT/mlflow_runs.png" 2000,1000
shot "http://127.0.0.1:$PORT/#/compare-runs?runs=$RUNS&experiments=[\"$EXP_ID\"]" "$OUT/mlflow_compare.png" 2000,2600
echo "wrote $OUT/mlflow_runs.png and $OUT/mlflow_compare.png"

#!/usr/bin/env bash
# `make demo`: a deletion request end to end through the service, on the embedded default: a
# private PostgreSQL cluster in demo-output/postgres, the coordinator, two workers and a
# file:// artifact store, all on this machine. Fashion-MNIST from the Debian package at
# fmnist-bench size (5,000 train, 1,000 validation). The CLI registers the data and a model,
# builds its attribution index over the workers, asks for 100 training examples to be
# forgotten, watches the run, and prints the audit (KLoM and accuracy per split, against
# retrains) and the audit log's record of who asked. The CLI and the workers use API tokens
# issued for the demo, as a deployment's would. Everything started here is stopped when the script ends, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${LETHE_DEMO_OUT:-demo-output}
MEMBERS=${LETHE_DEMO_MEMBERS:-512}
# N originals and N oracles (and N/2 held-out oracles): 80 is the smallest N for a KLoM
# figure that does not move with the sample (docs/DESIGN.md §1.7).
AUDIT=${LETHE_DEMO_AUDIT_MODELS:-80}
FORGET=${LETHE_DEMO_FORGET:-100}
BIN=target/release

step() { printf '\n== %s\n' "$*"; }

# A fresh start: the database and the artifacts of an earlier demo would be mixed with these.
rm -rf "$OUT"
mkdir -p "$OUT/logs" "$OUT/artifacts/models"
OUT=$(realpath "$OUT")
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
DASHBOARD_PORT=$(free_port)
export LETHE_COORDINATOR="http://127.0.0.1:$PORT"
export LETHE_ARTIFACTS="file://$OUT/artifacts"
LETHE="$BIN/lethe"

pids=()
stop_everything() {
    local status=$?
    if ((${#pids[@]})); then
        echo
        echo "== stopping the workers, the coordinator and its database"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    if ((status != 0)); then
        echo "demo failed (exit $status); logs in $OUT/logs/" >&2
    fi
    exit $status
}
trap stop_everything EXIT
trap 'exit 130' INT TERM

step "1/8 issue API tokens (tenant demo, the workers) and start the embedded stack: PostgreSQL in $OUT/postgres, the coordinator on $LETHE_COORDINATOR, two workers"
COORDINATOR=("$BIN/lethe-coordinator" --embedded-database "$OUT/postgres")
LETHE_TOKEN=$("${COORDINATOR[@]}" credentials create --tenant demo --name demo-cli)
WORKER_TOKEN=$("${COORDINATOR[@]}" credentials create --worker --name demo-workers)
export LETHE_TOKEN
"$BIN/lethe-coordinator" --embedded-database "$OUT/postgres" --listen "127.0.0.1:$PORT" \
    --coalescing-window-seconds 2 --dashboard-listen "127.0.0.1:$DASHBOARD_PORT" \
    >"$OUT/logs/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
    "$LETHE" operations list >/dev/null 2>&1 && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$OUT/logs/coordinator.log" >&2; exit 1; }
    sleep 0.5
done
"$LETHE" operations list >/dev/null 2>&1 || { echo "the coordinator did not answer; see $OUT/logs/coordinator.log" >&2; exit 1; }
for worker in 1 2; do
    LETHE_TOKEN=$WORKER_TOKEN "$BIN/lethe-worker" serve --name "demo-worker-$worker" \
        >"$OUT/logs/worker-$worker.log" 2>&1 &
    pids+=($!)
done
echo "coordinator and workers up; logs in $OUT/logs/"
echo "watch it live while the demo runs: http://127.0.0.1:$DASHBOARD_PORT/#token=$LETHE_TOKEN"

step "2/8 train the model to deploy (MLP 784-128-10, Adam 1e-3, batch 128, 20 epochs) and register it"
"$LETHE" train --dataset fmnist-bench --model mlp:128 --seed 0 \
    --out "$OUT/artifacts/models/base.safetensors"
"$LETHE" datasets register fmnist-bench builtin:fmnist-bench
"$LETHE" models register fashion "$LETHE_ARTIFACTS/models/base.safetensors" \
    --dataset fmnist-bench --sha256 "$(sha256sum "$OUT/artifacts/models/base.safetensors" | cut -d' ' -f1)"

step "3/8 build its attribution index: $MEMBERS subset models on random halves, fanned out over the workers"
"$LETHE" submit index fashion --members "$MEMBERS" --members-per-task 64

step "4/8 ask for $FORGET training examples to be forgotten, audited against $AUDIT retrains"
FORGET_LIST=$(python3 -c "import random; random.seed(7); print(','.join(map(str, sorted(random.sample(range(5000), $FORGET)))))")
echo "forget: ${FORGET_LIST:0:60}..."
"$LETHE" submit deletion fashion --forget "$FORGET_LIST" --audit-oracles "$AUDIT" \
    | tee "$OUT/deletion.txt"
REQUEST=$(head -1 "$OUT/deletion.txt")

step "5/8 the model's versions"
"$LETHE" models versions fashion

step "6/8 download the unlearned model"
"$LETHE" download "$REQUEST" --out "$OUT/fashion-v1.safetensors"

step "7/8 load it in PyTorch and check its accuracy on the validation split"
PYTHONPATH=crates/lethe-ml/python python - "$OUT/fashion-v1.safetensors" <<'PY'
import gzip, json, sys
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
import lethe_zoo

checkpoint = sys.argv[1]
with safe_open(checkpoint, "pt") as f:
    info = json.loads(f.metadata()["lethe"])
model = lethe_zoo.build(info["model"], info["sample_shape"], info["num_classes"]).eval()
model.load_state_dict(load_file(checkpoint))
# fmnist-bench's validation split: the first 1,000 examples of the Fashion-MNIST test file.
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:1000]
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz") as f:
    labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:1000]
with torch.no_grad():
    predicted = model(torch.from_numpy(images.astype(np.float32) / 255.0)).argmax(1).numpy()
lineage = info.get("lineage") or {}
print(f"PyTorch loaded {checkpoint} (version {lineage.get('version')}, "
      f"{len(lineage.get('forgotten', []))} examples forgotten) into lethe_zoo.{type(model).__name__}")
print(f"its validation accuracy: {(predicted == labels).mean():.3f}")
PY

step "8/8 the audit log: who asked for what, and when (append-only)"
"${COORDINATOR[@]}" audit-log --tenant demo >"$OUT/audit-log.jsonl"
python3 - "$OUT/audit-log.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    entry = json.loads(line)
    detail = entry["detail"] or {}
    if "forget" in detail:
        what = f"{len(detail['forget'])} examples of models/{detail['model']}"
    else:
        what = detail.get("model") or detail.get("uri") or detail.get("name") or ""
    print(f"{entry['at'][:19]}  {entry['actor']:<13} {entry['outcome']:<8} "
          f"{entry['action']:<20} {entry['resource']:<49} {what}")
PY

printf '\nthe unlearned model: %s/fashion-v1.safetensors (also in %s/artifacts, as the coordinator recorded it)\n' "$OUT" "$OUT"
printf 'the audit above is in the request'"'"'s result: %s operations get %s\n' "$LETHE" "$REQUEST"

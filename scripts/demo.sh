#!/usr/bin/env bash
# `make demo`: a deletion request end to end on the embedded default, Fashion-MNIST from the
# Debian package at fmnist-bench size (5,000 train, 1,000 validation): a base model, subset
# models trained many at once, the attribution index, a DMM request, its audit against models
# retrained without the forgotten examples, and the checkpoint read back by PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${LETHE_DEMO_OUT:-demo-output}
MEMBERS=${LETHE_DEMO_MEMBERS:-512}
# Originals and oracles for the audit: enough to see the effect, fewer than the 80 of a
# reported figure (make bench-quality uses 100).
AUDIT_MODELS=${LETHE_DEMO_AUDIT_MODELS:-32}
LETHE=target/release/lethe
mkdir -p "$OUT"

step() { printf '\n== %s\n' "$*"; }

step "1/7 train the base model (MLP 784-128-10, Adam 1e-3, batch 128, 20 epochs)"
"$LETHE" train --dataset fmnist-bench --model mlp:128 --seed 0 \
    --out "$OUT/base.safetensors" --outputs "$OUT/base-outputs.safetensors"

step "2/7 train $MEMBERS subset models on random halves of the training set, as one batched ensemble"
"$LETHE" ensemble --dataset fmnist-bench --model mlp:128 --members "$MEMBERS" --alpha 0.5 \
    --out "$OUT/subset-models"

step "3/7 evaluate the base model"
"$LETHE" evaluate --dataset fmnist-bench --checkpoint "$OUT/base.safetensors"

step "4/7 build the attribution index (subsampled influence) from the subset models"
"$LETHE" index build --ensemble "$OUT/subset-models" --out "$OUT/beta.safetensors"

step "5/7 forget 50 training examples with DMM: writes version 1 of the model"
python -c 'import random; random.seed(7); print(*sorted(random.sample(range(5000), 50)), sep="\n")' \
    > "$OUT/forget.txt"
"$LETHE" unlearn --dataset fmnist-bench --model "$OUT/base.safetensors" --method dmm \
    --index "$OUT/beta.safetensors" --forget-file "$OUT/forget.txt" --out "$OUT/base-v1.safetensors"

step "6/7 audit DMM: $AUDIT_MODELS originals against $AUDIT_MODELS models retrained without the 50 (KLoM)"
"$LETHE" ensemble --dataset fmnist-bench --model mlp:128 --members "$AUDIT_MODELS" --alpha 1 \
    --keep-weights --seed 1 --out "$OUT/originals"
"$LETHE" ensemble --dataset fmnist-bench --model mlp:128 --members $((AUDIT_MODELS * 3 / 2)) \
    --alpha 1 --exclude-file "$OUT/forget.txt" --seed 2 --out "$OUT/oracles"
"$LETHE" audit --dataset fmnist-bench --originals "$OUT/originals" --oracles "$OUT/oracles" \
    --held-out $((AUDIT_MODELS / 2)) --method dmm --index "$OUT/beta.safetensors" \
    --out "$OUT/audit.json"

step "7/7 load the checkpoint in PyTorch and compare its logits with Lethe's"
PYTHONPATH=crates/lethe-ml/python python - "$OUT" <<'PY'
import gzip, json, sys
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
import lethe_zoo

out = sys.argv[1]
checkpoint = f"{out}/base.safetensors"
with safe_open(checkpoint, "pt") as f:
    info = json.loads(f.metadata()["lethe"])
model = lethe_zoo.build(info["model"], info["sample_shape"], info["num_classes"]).eval()
model.load_state_dict(load_file(checkpoint))
with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
outputs = load_file(f"{out}/base-outputs.safetensors")
count = 256
x = torch.from_numpy(images[:count].astype(np.float32) / 255.0)
with torch.no_grad():
    logits = model(x)
difference = (logits - outputs["logits"][0, :count].float()).abs().max().item()
print(f"PyTorch loaded {checkpoint} into lethe_zoo.{type(model).__name__}; on training examples 0..{count}")
print(f"its logits differ from Lethe's recorded fp16 logits by at most {difference:.2e} (fp16 rounding)")
PY

printf '\nartifacts in %s/: base.safetensors (checkpoint), base-outputs.safetensors (logits, margins),\n' "$OUT"
printf 'subset-models/ (masks and logits of %s subset models), beta.safetensors (the index),\n' "$MEMBERS"
printf 'base-v1.safetensors (the model without forget.txt, with its lineage), audit.json and audit.md\n'

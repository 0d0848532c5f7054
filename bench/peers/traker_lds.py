"""The TRAK library (traker, its CPU projector) on a Lethe checkpoint, scored by LDS on the
held-out members of a Lethe ensemble directory: the peer of Lethe's TRAK.

usage: traker_lds.py CHECKPOINT ENSEMBLE_DIR --held-out START END --estimation START END
                     [--proj-dim 2048] [--train 5000] [--val 1000]
Prints one JSON line: {"lds", "featurize_examples_per_s", "proj_dim", "held_out_models"}.
"""

import argparse
import glob
import gzip
import json
import shutil
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file
from trak import TRAKer
from trak.projectors import BasicProjector, ProjectionType

import lethe_zoo

DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path, offset, count):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)[: count]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("ensemble")
    parser.add_argument("--held-out", nargs=2, type=int, required=True)
    parser.add_argument("--estimation", nargs=2, type=int, required=True)
    parser.add_argument("--proj-dim", type=int, default=2048)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--val", type=int, default=1000)
    # traker's default stores features in float16; at k = 2,048 on fmnist-bench that default
    # loses the signal, so the bench runs it in float32 (the peer at its best).
    parser.add_argument("--half-precision", action="store_true")
    args = parser.parse_args()

    n, v = args.train, args.val
    x = torch.from_numpy(read_idx(f"{DIR}/train-images-idx3-ubyte.gz", 16, n * 784).reshape(n, 1, 28, 28).astype(np.float32) / 255)
    y = torch.from_numpy(read_idx(f"{DIR}/train-labels-idx1-ubyte.gz", 8, n).astype(np.int64))
    vx = torch.from_numpy(read_idx(f"{DIR}/t10k-images-idx3-ubyte.gz", 16, v * 784).reshape(v, 1, 28, 28).astype(np.float32) / 255)
    vy = torch.from_numpy(read_idx(f"{DIR}/t10k-labels-idx1-ubyte.gz", 8, v).astype(np.int64))

    model = lethe_zoo.MLP(784, [128], 10).eval()
    model.load_state_dict(load_file(args.checkpoint))
    grad_dim = sum(p.numel() for p in model.parameters())
    projector = BasicProjector(grad_dim=grad_dim, proj_dim=args.proj_dim, seed=0, proj_type=ProjectionType.rademacher, device="cpu")
    save_dir = tempfile.mkdtemp(prefix="traker-peer-")
    traker = TRAKer(model=model, task="image_classification", train_set_size=n, projector=projector,
                    proj_dim=args.proj_dim, device="cpu", save_dir=save_dir,
                    use_half_precision=args.half_precision)
    traker.load_checkpoint(model.state_dict(), model_id=0)
    batch = 100
    start = time.perf_counter()
    for begin in range(0, n, batch):
        traker.featurize(batch=(x[begin:begin + batch], y[begin:begin + batch]), num_samples=min(batch, n - begin))
    featurize_seconds = time.perf_counter() - start
    traker.finalize_features()
    traker.start_scoring_checkpoint(exp_name="val", checkpoint=model.state_dict(), model_id=0, num_targets=v)
    for begin in range(0, v, batch):
        traker.score(batch=(vx[begin:begin + batch], vy[begin:begin + batch]), num_samples=min(batch, v - begin))
    scores = torch.as_tensor(np.array(traker.finalize_scores(exp_name="val"))).float()  # n × v
    shutil.rmtree(save_dir, ignore_errors=True)

    files = sorted(glob.glob(f"{args.ensemble}/members-*.safetensors"))
    masks = torch.cat([load_file(f)["masks"] for f in files]).float()
    logits = torch.cat([load_file(f)["logits"] for f in files]).float()[:, n:n + v]
    labels = vy
    def margins(z):
        correct = z.gather(-1, labels.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)
        others = z.scatter(-1, labels.view(1, -1, 1).expand(z.shape[0], -1, 1), float("-inf"))
        return correct - torch.logsumexp(others, -1)
    e0, e1 = args.estimation
    h0, h1 = args.held_out
    p = masks[e0:e1].mean(0)
    predicted = (masks[h0:h1] - p) @ scores  # held-out × v: predicted change of each target's margin
    actual = margins(logits[h0:h1])
    def ranks(t):
        return t.argsort(0).argsort(0).double()
    ra, rb = ranks(predicted), ranks(actual)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    lds = float(((ra * rb).sum(0) / ((ra * ra).sum(0) * (rb * rb).sum(0)).sqrt()).mean())
    print(json.dumps({"lds": lds, "featurize_examples_per_s": n / featurize_seconds, "proj_dim": args.proj_dim,
                      "held_out_models": h1 - h0}))


if __name__ == "__main__":
    main()

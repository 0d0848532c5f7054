"""The peer of `make bench-ensemble`: the fmnist-bench recipe as a plain PyTorch loop, one model
at a time (MLP 784-128-10, Adam 1e-3, batch 128, 20 epochs, alpha-subsets of the training set).

Prints one JSON line: {"members", "examples", "seconds", "examples_per_s", "val_acc_mean"}.
"""

import argparse
import gzip
import json
import time

import numpy as np
import torch
from torch import nn

DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    x = torch.from_numpy(read_idx(f"{DIR}/train-images-idx3-ubyte.gz")[: args.train].copy()).float().div(255).flatten(1).to(device)
    y = torch.from_numpy(read_idx(f"{DIR}/train-labels-idx1-ubyte.gz")[: args.train].astype(np.int64)).to(device)
    vx = torch.from_numpy(read_idx(f"{DIR}/t10k-images-idx3-ubyte.gz")[: args.val].copy()).float().div(255).flatten(1).to(device)
    vy = torch.from_numpy(read_idx(f"{DIR}/t10k-labels-idx1-ubyte.gz")[: args.val].astype(np.int64)).to(device)
    subset_size = round(args.alpha * args.train)
    examples = 0
    accuracies = []
    start = time.perf_counter()
    for member in range(args.members):
        torch.manual_seed(member)
        subset = torch.randperm(args.train)[:subset_size].to(device)
        model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(args.epochs):
            order = subset[torch.randperm(subset_size).to(device)]
            for begin in range(0, subset_size, args.batch):
                index = order[begin : begin + args.batch]
                loss = nn.functional.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                examples += len(index)
        with torch.no_grad():
            accuracies.append(float((model(vx).argmax(1) == vy).float().mean()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "members": args.members,
        "examples": examples,
        "seconds": seconds,
        "examples_per_s": examples / seconds,
        "val_acc_mean": sum(accuracies) / len(accuracies),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
    }))


if __name__ == "__main__":
    main()

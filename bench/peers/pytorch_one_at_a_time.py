"""The peers of `make bench-ensemble`: the fmnist-bench recipe (Adam 1e-3, batch 128,
alpha-subsets of the training set) in plain PyTorch, for the zoo's MLP, small CNN or ResNet-9
(the twins in lethe_zoo.py).

--mode loop trains one model at a time, as most users would; --mode vmap trains all members
at once with torch.func (stack_module_state + vmap over functional_call), PyTorch's own way to
batch an ensemble. Like the engine's ensembles, every trained model then records its logits on
every target (the training and validation examples): a subset model is only useful with them.

Prints one JSON line: {"members", "examples", "seconds", "examples_per_s", "val_acc_mean", ...}.
"""

import argparse
import copy
import gzip
import json
import time

import numpy as np
import torch
from torch import nn

import lethe_zoo

DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def build(name):
    if name == "mlp":
        return lethe_zoo.MLP(784, [128], 10)
    if name == "cnn":
        return lethe_zoo.SmallCNN(1, 28, 28, 10)
    if name == "resnet9":
        return lethe_zoo.resnet9(channels=1, classes=10)
    raise SystemExit(f"unknown model {name}")


def outputs_and_accuracy(model, x, vx, vy):
    """The model's logits on every target (train then validation, in chunks of 256) and its
    validation accuracy."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in torch.cat([x, vx]).split(256)])
    model.train()
    return logits, float((logits[len(x):].argmax(1) == vy).float().mean())


def train_loop(args, x, y, vx, vy, subsets):
    examples, accuracies = 0, []
    for member, subset in enumerate(subsets):
        torch.manual_seed(member)
        model = build(args.model).to(x.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(args.epochs):
            order = subset[torch.randperm(len(subset)).to(x.device)]
            for begin in range(0, len(subset), args.batch):
                index = order[begin : begin + args.batch]
                loss = nn.functional.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                examples += len(index)
        accuracies.append(outputs_and_accuracy(model, x, vx, vy)[1])
    return examples, accuracies


def train_vmap(args, x, y, vx, vy, subsets):
    from torch.func import functional_call, stack_module_state, vmap

    models = []
    for member in range(len(subsets)):
        torch.manual_seed(member)
        model = build(args.model).to(x.device)
        # vmap cannot update running statistics in place: batch norm uses batch statistics.
        torch.func.replace_all_batch_norm_modules_(model)
        models.append(model)
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def member_loss(p, b, xb, yb):
        return nn.functional.cross_entropy(functional_call(skeleton, (p, b), (xb,)), yb)

    loss_of_all = vmap(member_loss)
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    members, size = len(subsets), len(subsets[0])
    subsets = torch.stack(subsets)
    examples = 0
    for _ in range(args.epochs):
        orders = torch.stack([s[torch.randperm(size).to(x.device)] for s in subsets])
        for begin in range(0, size, args.batch):
            index = orders[:, begin : begin + args.batch]
            loss = loss_of_all(params, buffers, x[index], y[index]).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            examples += index.numel()
    accuracies = []
    for member, model in enumerate(models):
        model.load_state_dict({name: value[member] for name, value in {**params, **buffers}.items()}, strict=False)
        accuracies.append(outputs_and_accuracy(model, x, vx, vy)[1])
    return examples, accuracies


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn", "resnet9"])
    parser.add_argument("--mode", default="loop", choices=["loop", "vmap"])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    def images(name, count):
        pixels = read_idx(f"{DIR}/{name}-images-idx3-ubyte.gz")[:count].copy()
        tensor = torch.from_numpy(pixels).float().div(255).unsqueeze(1)
        return (tensor.flatten(1) if args.model == "mlp" else tensor).to(device)

    def labels(name, count):
        return torch.from_numpy(read_idx(f"{DIR}/{name}-labels-idx1-ubyte.gz")[:count].astype(np.int64)).to(device)

    x, y = images("train", args.train), labels("train", args.train)
    vx, vy = images("t10k", args.val), labels("t10k", args.val)
    subset_size = round(args.alpha * args.train)
    subsets = []
    for member in range(args.members):
        torch.manual_seed(member)
        subsets.append(torch.randperm(args.train)[:subset_size].to(device))
    start = time.perf_counter()
    train = train_loop if args.mode == "loop" else train_vmap
    examples, accuracies = train(args, x, y, vx, vy, subsets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "model": args.model,
        "mode": args.mode,
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

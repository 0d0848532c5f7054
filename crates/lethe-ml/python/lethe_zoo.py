"""PyTorch twins of Lethe's model zoo, with the same parameter names.

A Lethe checkpoint loads into these modules with
`model.load_state_dict(safetensors.torch.load_file(path))`.
"""

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, inputs, hidden, classes):
        super().__init__()
        widths = [inputs, *hidden, classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

    def forward(self, x):
        h = x.flatten(1)
        for index, layer in enumerate(self.layers):
            h = layer(h)
            if index < len(self.layers) - 1:
                h = torch.relu(h)
        return h


class SmallCNN(nn.Module):
    def __init__(self, channels, height, width, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


def conv_bn(inputs, outputs, kernel=3, stride=1, padding=1):
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return x + self.module(x)


class Mul(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return x * self.weight


def resnet9(channels=3, classes=10):
    """The ffcv / DMM ResNet-9 (2,274,880 parameters on CIFAR-10)."""
    return nn.Sequential(
        conv_bn(channels, 64),
        conv_bn(64, 128, kernel=5, stride=2, padding=2),
        Residual(nn.Sequential(conv_bn(128, 128), conv_bn(128, 128))),
        conv_bn(128, 256),
        nn.MaxPool2d(2),
        Residual(nn.Sequential(conv_bn(256, 256), conv_bn(256, 256))),
        conv_bn(256, 128, padding=0),
        nn.AdaptiveMaxPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(128, classes, bias=False),
        Mul(0.2),
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, with its parameter names."""

    def __init__(self, inputs, outputs, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.downsample = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(h + shortcut)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (same parameter names), for any number of input channels."""

    def __init__(self, channels=3, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inputs = 64
        for stage, outputs in enumerate([64, 128, 256, 512]):
            stride = 1 if stage == 0 else 2
            blocks = [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            inputs = outputs
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.max_pool2d(h, 3, stride=2, padding=1)
        for stage in range(1, 5):
            h = getattr(self, f"layer{stage}")(h)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


def build(spec, sample_shape, classes):
    """Builds the twin of a Lethe `ModelSpec` (as stored in checkpoint metadata)."""
    arch = spec["arch"]
    if arch == "mlp":
        inputs = 1
        for dim in sample_shape:
            inputs *= dim
        return MLP(inputs, spec["hidden"], classes)
    if arch == "small_cnn":
        return SmallCNN(*sample_shape, classes)
    if arch == "resnet9":
        return resnet9(sample_shape[0], classes)
    if arch == "resnet18":
        return ResNet18(sample_shape[0], classes)
    raise ValueError(f"no PyTorch twin for {arch}")

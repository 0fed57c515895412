"""The embedded default model: a small residual CNN for scikit-learn's 8x8 digits.

clado trains it itself on first use (deterministically, seconds on a laptop CPU) and caches
the weights as safetensors, so the whole pipeline runs with no download.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import EnvironmentProblem

# Bump when the architecture or the training recipe changes: it names the cached file.
EMBEDDED_VERSION = "v1"
TRAIN_EPOCHS = 40
TRAIN_SEED = 0


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class DigitsResNet(nn.Module):
    """stem conv, three stages of residual blocks (16, 32, 64 channels), linear classifier:
    14 convolutions and one linear layer, 13 of them decided by default."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def clado_home() -> Path:
    return Path(os.environ.get("CLADO_HOME", Path.home() / ".cache" / "clado"))


def embedded_weights_path() -> Path:
    return clado_home() / f"embedded-digits-resnet-{EMBEDDED_VERSION}.safetensors"


def train_embedded(train_x: torch.Tensor, train_y: torch.Tensor, epochs: int = TRAIN_EPOCHS,
                   log=None) -> DigitsResNet:
    """Deterministic training: fixed seed, fixed batch order, one thread-count-independent
    recipe (Adam, cosine schedule, light shift augmentation)."""
    g = torch.Generator().manual_seed(TRAIN_SEED)
    torch.manual_seed(TRAIN_SEED)
    model = DigitsResNet(num_classes=int(train_y.max()) + 1, in_channels=train_x.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    steps_per_epoch = (len(train_x) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    t0 = time.time()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(train_x), generator=g)
        for s in range(steps_per_epoch):
            idx = perm[s * 64:(s + 1) * 64]
            xb, yb = train_x[idx], train_y[idx]
            # shift each image by up to one pixel: cheap augmentation that helps 8x8 digits
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if log and (epoch + 1) % 10 == 0:
            log(f"embedded model: epoch {epoch + 1}/{epochs} loss {loss.item():.4f} ({time.time() - t0:.1f}s)")
    model.eval()
    return model


def load_or_train_embedded(train_x: torch.Tensor, train_y: torch.Tensor, log=None) -> DigitsResNet:
    path = embedded_weights_path()
    side = path.with_suffix(".sha256")
    model = DigitsResNet(num_classes=int(train_y.max()) + 1, in_channels=train_x.shape[1])
    if path.is_file() and side.is_file():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == side.read_text().strip():
            try:
                from safetensors.torch import load

                model.load_state_dict(load(data))
                model.eval()
                return model
            except Exception:
                pass
        if log:  # a damaged cache file is retrained, never trusted
            log(f"embedded model cache {path} fails its checksum or does not load; retraining")
    # where the trained model goes must be writable before ~10 s of training, not after
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create {path.parent} for the embedded model (CLADO_HOME): "
                                 f"{exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise EnvironmentProblem(f"{path.parent} is not writable (CLADO_HOME)")
    if log:
        log(f"training the embedded model on digits (first use; cached at {path})")
    model = train_embedded(train_x, train_y, log=log)
    from safetensors.torch import save

    from ..store import atomic_write

    data = save({k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_write(path, data)
    atomic_write(side, hashlib.sha256(data).hexdigest().encode())
    return model

"""Is the synthetic task learnable but not trivial? (a measurement, not a test)

Usage, from the repository root::

    python benchmarks/synthetic_learnability.py [EPOCHS] [key=value generator options ...]

Generates 4000 + 400 images at 32x32 (seed 0, default options unless given, e.g.
``clutter=1.0``), trains a plain ~270k-parameter CNN (5 conv+BN+ReLU, 3 max-pools, a
2-layer regression head) with a smooth-L1 loss on labelled keypoints and a mild
brightness/contrast augmentation, and prints the test PCK (share of labelled keypoints
within 1 and 2 pixels) every 5 epochs and per keypoint at the end. This is only a yardstick
for the data; the real networks and training live elsewhere in pruner/.
"""

import ast
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usnprune.pruner.data.coco import load_split  # noqa: E402
from usnprune.pruner.data.synthetic import generate  # noqa: E402


def network(k: int) -> nn.Module:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 96), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(96 * 16, 96), nn.ReLU(), nn.Linear(96, 2 * k),
    )


def main(epochs: int = 30, **options) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "ds", 4000, 400, seed=0, progress=False, **options)
        train, test = load_split(root, "train", 32, cache=False), load_split(root, "test", 32, cache=False)
    x, y, _ = train.to_torch()
    lab = torch.from_numpy(train.labelled)
    xt, yt, _ = test.to_torch()
    labt = torch.from_numpy(test.labelled)
    k = y.shape[1]
    net = network(k)
    print(f"{sum(p.numel() for p in net.parameters())} parameters, options {options or 'default'}")
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        for idx in torch.randperm(len(x)).split(64):
            c = 1 + (torch.rand(len(idx), 1, 1, 1) - 0.5) * 0.2
            b = (torch.rand(len(idx), 1, 1, 1) - 0.5) * 0.2
            pred = net((c * x[idx] + b).clamp(0, 1)).view(-1, k, 2)
            loss = nn.functional.smooth_l1_loss(pred, y[idx], reduction="none").sum(-1)
            loss = (loss * lab[idx]).sum() / lab[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if epoch % 5 == 0 or epoch == epochs:
            net.eval()
            with torch.no_grad():
                dist = (net(xt).view(-1, k, 2) - yt).norm(dim=-1)
            d = dist[labt]
            print(
                f"epoch {epoch:3d}  {time.perf_counter() - t0:6.0f} s  PCK@1 {(d < 1).float().mean():.3f}  "
                f"PCK@2 {(d < 2).float().mean():.3f}  mean error {d.mean():.2f} px",
                flush=True,
            )
    for j, name in enumerate(test.keypoint_names):
        print(f"  {name:16s} PCK@2 {(dist[:, j][labt[:, j]] < 2).float().mean():.3f}")


def _value(text: str):
    try:
        return ast.literal_eval(text)  # numbers and [low, high] lists
    except (ValueError, SyntaxError):
        return text  # a bare word such as plain


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 and "=" not in sys.argv[1] else 30
    opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    main(n, **{key: _value(v) for key, v in opts.items()})

"""How much does a gradient-flow checkup cost? One checkup against one ordinary training step.

    python bench/bench_checkup.py [--device cpu|cuda] [--repeats 20]

Builds mid-sized models (a 12-layer, 512-wide ReLU MLP with batch normalization, about 3 million
parameters; a ResNet-style CNN of torchvision's basic blocks with in-place ReLUs, about 2.8 million;
and a 6-block transformer encoder of width 256, about 5 million) and times, on the same batch:

* one ordinary training step (zero_grad, forward, backward, SGD step);
* one checkup (forward with activation hooks, backward via autograd.grad, per-layer statistics);
* for float16 on CUDA (or bfloat16 on CPU), one checkup with its float32 reference pass;
* the training monitor (:class:`vanishing.monitor.Monitor`): steps of the float32 MLP and of the
  CNN with and without it, alternated three times (best of three each), monitoring every step (the cost of one
  monitored step) and every 50 steps (``--monitor-steps`` steps), and the overhead in percent.

It prints a table of median times and the checkup/step ratio. A benchmark prints; it is never a timed test.
"""

from __future__ import annotations

import vanishing as vg  # first: it pins the CPU kernels before NumPy and torch choose theirs

# isort: split
import argparse
import statistics
import time

import torch
from torch import nn

from vanishing import checkup, models, monitor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator, hooks
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Encoder(nn.Module):
    """Token embedding, a stack of nn.TransformerEncoderLayer blocks and a read-out of the mean state."""

    def __init__(self, vocab: int = 1000, d_model: int = 256, blocks: int = 6):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 8, 4 * d_model, dropout=0.1, activation=nn.GELU(),
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convolutions with batch norm, in-place ReLUs, and an
    identity shortcut (a strided 1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


def resnet(widths: tuple[int, ...] = (64, 128, 256), classes: int = 10) -> nn.Sequential:
    """A CIFAR-sized ResNet: a 3x3 stem, two basic blocks per width (the first strided after the first
    stage), global average pooling and a linear read-out; He (fan-out) initialization as torchvision's."""
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                               nn.ReLU(inplace=True)]
    for i, w in enumerate(widths):
        c_in = widths[max(i - 1, 0)]
        layers += [BasicBlock(c_in, w, 1 if i == 0 else 2), BasicBlock(w, w)]
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], classes))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def cases(device: torch.device):
    """(name, model, batch, dtype) for each model measured."""
    vg.seed(0)
    mlp = models.mlp(in_features=256, out_features=10, depth=12, width=512, activation="relu", init="he",
                     norm="batch").to(device)
    x, y = torch.randn(256, 256, device=device), torch.randint(0, 10, (256,), device=device)
    yield "MLP 12x512, batch norm", mlp, (x, y), torch.float32
    cnn = resnet().to(device)
    images = torch.randn(32, 3, 32, 32, device=device)
    yield "ResNet-style CNN, 32x32 images", cnn, (images, torch.randint(0, 10, (32,), device=device)), torch.float32
    enc = Encoder().to(device)
    tokens = torch.randint(0, 1000, (32, 128), device=device)
    yield "transformer 6x256, seq 128", enc, (tokens, torch.randint(0, 1000, (32,), device=device)), torch.float32
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    mlp_low = models.mlp(in_features=256, out_features=10, depth=12, width=512, activation="relu", init="he",
                         norm="batch").to(device, low)
    yield f"MLP 12x512, {str(low).replace('torch.', '')}", mlp_low, (x.to(low), y), low


def measure(name: str, model: nn.Module, batch, dtype: torch.dtype, device: torch.device, repeats: int) -> None:
    """Time one training step and one checkup of ``model`` on ``batch``; print one table row (two for low precision)."""
    loss_fn = nn.functional.cross_entropy
    inputs, targets = batch
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
        opt.step()

    def check(reference: bool = True) -> None:
        checkup.checkup(model, batch, loss_fn, lr=1e-3, reference=reference)

    params = sum(p.numel() for p in model.parameters())
    t_step = _median_seconds(step, device, repeats)
    t_check = _median_seconds(check, device, repeats)
    note = "with float32 reference pass" if dtype != torch.float32 else ""
    print(f"{name:30s} {params / 1e6:7.2f}M {t_step * 1e3:9.1f}ms {t_check * 1e3:7.1f}ms "
          f"{t_check / t_step:6.2f}  {note}")
    if dtype != torch.float32:
        t_noref = _median_seconds(lambda: check(False), device, repeats)
        print(f"{name + ' (no reference)':30s} {'':>8s} {'':>11s} {t_noref * 1e3:7.1f}ms {t_noref / t_step:6.2f}")


def measure_monitor(case: int, steps: int, every: int, device: torch.device) -> None:
    """Time ``steps`` training steps of model number ``case`` with and without a Monitor; print the
    overhead."""
    name, model, (x, y), _ = list(cases(device))[case]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def run(watched: bool) -> float:
        mon = monitor.Monitor(model, opt, every=every) if watched else None
        _sync(device)
        # CPU time of this process: on a shared machine, wall time mostly measures the neighbours
        clock = time.process_time if device.type == "cpu" else time.perf_counter
        start = clock()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        _sync(device)
        if mon is not None:
            mon.remove()
        return clock() - start

    run(False)  # warm-up
    plain, watched = [], []
    for _ in range(3):
        plain.append(run(False))
        watched.append(run(True))
    a, b = min(plain), min(watched)
    kind = "CPU" if device.type == "cpu" else "wall"
    print(f"\nmonitor every {every} steps, {steps} steps of the {name} ({kind} time, best of 3): "
          f"{a:.2f} s without, {b:.2f} s with, overhead {100 * (b - a) / a:+.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: vanishing.device())")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--monitor-steps", type=int, default=200,
                        help="training steps per timing of the monitor's overhead (0: skip)")
    args = parser.parse_args()
    device = vg.device(args.device)
    vg.seed(0)  # also pins torch to one CPU thread (VANISHING_THREADS overrides)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} runs")
    head = f"{'model':30s} {'params':>8s} {'train step':>11s} {'checkup':>9s} {'ratio':>6s}  note"
    print(head)
    print("-" * len(head))
    for name, model, batch, dtype in cases(device):
        measure(name, model, batch, dtype, device, args.repeats)
    if args.monitor_steps:
        # every step monitored: the cost of one monitored step, which every=50 spreads over 50
        for case in (0, 1):  # the MLP and the CNN
            measure_monitor(case, max(args.monitor_steps // 10, 5), 1, device)
            measure_monitor(case, args.monitor_steps, 50, device)


if __name__ == "__main__":
    main()

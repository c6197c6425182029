"""Print training-step times and matrix-multiply throughput on the CPU and, when present, the GPU.

    python bench/bench_hardware.py [--depth 20] [--width 256] [--batch 256] [--sizes 256 512 1024 2048]

The same measurements as the chapter "Hardware" (chapters/12_hardware.ipynb),
at sizes chosen on the command line. A benchmark prints; it is never a timed
test. Timings depend on the machine and its load: compare only runs made on
the same machine.
"""

from __future__ import annotations

import argparse

import torch

import vanishing as vg
from vanishing import models, precision


def training_step_seconds(device: str, *, depth: int, width: int, batch: int, repeat: int) -> float:
    """Median seconds of one SGD step of a deep sigmoid network on ``device``."""
    torch.manual_seed(0)
    net = models.mlp(in_features=64, out_features=10, depth=depth, width=width, activation="sigmoid", init="xavier").to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(batch, 64, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return precision.time_call(step, repeat=repeat, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--formats", nargs="+", default=["float32", "bfloat16"], choices=list(precision.FORMATS))
    args = parser.parse_args()

    vg.seed(0)  # pins torch to one CPU thread unless VANISHING_THREADS says otherwise
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}; devices: {', '.join(devices)}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")

    step = {}
    for d in devices:
        step[d] = training_step_seconds(d, depth=args.depth, width=args.width, batch=args.batch, repeat=args.repeat)
        print(f"{d:4s} training step (depth {args.depth}, width {args.width}, batch {args.batch}): {1e3 * step[d]:.3f} ms")
    if "cuda" in step:
        print(f"GPU speed-up for the training step: {step['cpu'] / step['cuda']:.1f}x")

    for d in devices:
        for name in args.formats:
            for n in args.sizes:
                flops = precision.matmul_throughput(n, name=name, device=d, repeat=args.repeat)
                print(f"{d:4s} {name:8s} matmul n={n:5d}: {flops / 1e9:10.1f} GFLOPS")


if __name__ == "__main__":
    main()

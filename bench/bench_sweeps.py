"""Benchmark: a depth x activation x seed sweep, one network at a time vs stacked (vanishing.sweeps).

The sweep is the kind that dominates the book's execution time: depths
(10, 20, 30, 40, 50) x activations (sigmoid, tanh, relu, leaky_relu, gelu) x 3
seeds, width 64, Xavier initialization; gradient norms at initialization on a
256-example batch of the digits, then 100 steps of minibatch SGD (batch 64,
lr 0.05, evaluation on the whole training set every 10 steps) for the depth-10
and depth-20 networks. Both forms run on the CPU with torch pinned to one
thread (``vg.seed``) and build the networks in the same way
(``sweeps.build_mlp``); the script checks that they agree and prints a markdown
table of wall times (best of ``--repeats`` interleaved runs) and speed-ups.

    python bench/bench_sweeps.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import vanishing as vg
from vanishing import data, sweeps

ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu"]


def max_rel(ref: list[dict], new: list[dict], key: str) -> float:
    """Largest |new - ref| / |ref| over all rows and entries of ``key`` (entries where ref is 0 must match exactly)."""
    worst = 0.0
    for a, b in zip(ref, new, strict=True):
        x, y = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
        nz = x != 0
        if (~nz).any() and not np.array_equal(x[~nz], y[~nz]):
            return float("inf")
        if nz.any():
            worst = max(worst, float(np.max(np.abs(x[nz] - y[nz]) / np.abs(x[nz]))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the best time counts")
    parser.add_argument("--quick", action="store_true", help="a tiny sweep, to check that the script runs")
    args = parser.parse_args()

    vg.seed(0)  # one CPU thread, deterministic kernels
    (x_train, y_train), _ = data.digits(seed=0)
    probe = (x_train[:256], y_train[:256])
    depths, seeds, steps = ((10, 20, 30, 40, 50), [0, 1, 2], 100)
    train_depths = (10, 20)
    if args.quick:
        depths, seeds, steps, train_depths = (3, 5), [0], 10, (3,)
    grid = dict(activations=ACTIVATIONS, inits=["xavier"], seeds=seeds, width=64, out_features=10)
    tasks = {
        "gradient norms at init": dict(depths=list(depths), data=probe, **grid),
        f"{steps} SGD steps + grad norms": dict(
            depths=list(train_depths), data=probe, steps=steps, train_data=(x_train, y_train), lr=0.05,
            batch_size=64, eval_every=10, batch_seed=0, **grid
        ),
    }
    n_nets = {name: len(kw["depths"]) * len(ACTIVATIONS) * len(seeds) for name, kw in tasks.items()}

    best: dict[tuple[str, str], float] = {}
    best_cpu: dict[tuple[str, str], float] = {}
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for name, kw in tasks.items():
            for method in ("loop", "batched"):
                start, start_cpu = time.perf_counter(), time.process_time()
                rows = sweeps.depth_sweep(method=method, **kw)
                elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                best[name, method] = min(best.get((name, method), float("inf")), elapsed)
                best_cpu[name, method] = min(best_cpu.get((name, method), float("inf")), cpu)
                results[name, method] = rows

    # Building the networks (models.mlp under each seed) is the same work in both forms.
    build = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for d in depths:
            for a in ACTIVATIONS:
                for s in seeds:
                    sweeps.build_mlp(seed=s, in_features=64, out_features=10, depth=d, width=64, activation=a,
                                     init="xavier")
        build = min(build, time.perf_counter() - start)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
          f"best of {args.repeats}\n")
    print("| sweep | networks | loop wall (s) | batched wall (s) | speed-up | loop CPU (s) | batched CPU (s) "
          "| speed-up (CPU) | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    total_loop = total_batched = total_loop_cpu = total_batched_cpu = 0.0
    for name in tasks:
        loop, batched = best[name, "loop"], best[name, "batched"]
        loop_cpu, batched_cpu = best_cpu[name, "loop"], best_cpu[name, "batched"]
        total_loop, total_batched = total_loop + loop, total_batched + batched
        total_loop_cpu, total_batched_cpu = total_loop_cpu + loop_cpu, total_batched_cpu + batched_cpu
        diff = max_rel(results[name, "loop"], results[name, "batched"], "grad_norms")
        label = "grad norms"
        if "loss" in results[name, "loop"][0]:
            diff = max(diff, max_rel(results[name, "loop"], results[name, "batched"], "loss"))
            label = "grad norms, loss curves"
        print(f"| {name} | {n_nets[name]} | {loop:.2f} | {batched:.2f} | {loop / batched:.1f}x | {loop_cpu:.2f} | "
              f"{batched_cpu:.2f} | {loop_cpu / batched_cpu:.1f}x | {diff:.1e} ({label}) |")
    print(f"| **whole sweep** | | {total_loop:.2f} | {total_batched:.2f} | {total_loop / total_batched:.1f}x | "
          f"{total_loop_cpu:.2f} | {total_batched_cpu:.2f} | {total_loop_cpu / total_batched_cpu:.1f}x | |")
    print(f"\nBuilding the {n_nets['gradient norms at init']} networks of the first sweep with models.mlp "
          f"(included in both columns): {build:.2f} s.")
    print("Times: best of the repeats; CPU time is this process's, the fairer figure on a busy machine.")
    print("Agreement: max relative difference between the loop and the batched form (gradient norms, and the "
          "loss curves of the trained networks). At larger learning rates training itself amplifies rounding: "
          "the loop's own curves then move as much when one weight matrix is perturbed by one rounding error.")


if __name__ == "__main__":
    main()

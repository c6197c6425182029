"""Benchmark: the book's sweeps, one network at a time vs stacked (vanishing.sweeps).

Three sweeps, each exactly as a chapter runs it at ``small`` scale:

* ``05 gradient profiles``: depths 10, 20, 50 x (five activations with Xavier, ReLU with
  He) x 5 seeds, width 64, gradient norms at initialization on 256 digits
  (05_activations; ``probes.gradient_profile`` stacks the seeds);
* ``05 training``: five activations x 5 seeds x depths 3, 20, width 64, 200 steps of
  SGD with momentum (batch 128, lr 0.03, each seed its own minibatches), the training set
  evaluated every 40 steps; one stack per depth;
* ``08 training``: plain and residual ReLU networks x depths 4, 12, 28 x 5 seeds,
  width 32, 300 steps of SGD with momentum and clipping (batch 64, lr 0.02, each seed
  its own minibatches), train and test set evaluated every 20 steps, per-layer gradient
  norms recorded; one stack per architecture and depth.

The loop is the plain reference (``probes.grad_norms``-style autograd per network,
``train.train`` per network); the stacked form builds the same networks and runs them
with ``sweeps.grad_norms_batched`` / ``sweeps.train_batched``. Both run on the CPU with
torch pinned to one thread (``vg.seed``). The script prints a markdown table of wall
and CPU times (best of ``--repeats`` interleaved runs), the speed-up and how closely
the two forms agree, and exits with an error if they disagree beyond float32 rounding
(``AGREE``) on the gradient norms or on the loss after the first update. It uses only
the public functions of ``vanishing.sweeps``.

    python bench/bench_sweeps.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import vanishing as vg  # first: it pins the CPU kernels before NumPy and torch choose theirs

# isort: split
import argparse
import math
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vanishing import data, models, probes, sweeps, train

ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu"]
#: Largest relative difference between the two forms the script accepts (gradient norms; loss after one
#: update): float32 rounding of sums taken in another order, with a wide margin. Beyond it the script fails.
AGREE = 1e-5


def loop_losses(net: models.MLP, train_set, seed: int, **kw) -> list[float]:
    """train.train's loss curve for one network; a run that diverges ends in nan from its divergence on."""
    evaluations = len({1, *range(kw["eval_every"], kw["steps"] + 1, kw["eval_every"])})
    try:
        return train.train(net, train_set, generator=torch.Generator().manual_seed(seed), **kw)["loss"]
    except train.Diverged as err:
        return err.history["loss"] + [math.nan] * (evaluations - len(err.history["loss"]))


def gradient_task(depths: tuple[int, ...], seeds: int, probe: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Callable]:
    """05_activations' gradient sweep: returns loop and batched runners giving (configs x seeds, layers) norms."""
    configs = [(a, "xavier") for a in ACTS] + [("relu", "he")]

    def nets(depth: int, act: str, init: str) -> list[models.MLP]:
        out = []
        for s in range(seeds):
            torch.manual_seed(s)
            out.append(models.mlp(in_features=64, out_features=10, depth=depth, width=64, activation=act, init=init))
        return out

    def loop() -> np.ndarray:
        rows = []
        for act, init in configs:
            for d in depths:
                for net in nets(d, act, init):
                    rows.append(list(probes.grad_norms(net, *probe, F.cross_entropy).values()))
        return np.concatenate([np.asarray(r) for r in rows])

    def batched() -> np.ndarray:
        rows = []
        for act, init in configs:
            for d in depths:
                rows.extend(sweeps.grad_norms_batched(sweeps.stack_mlps(nets(d, act, init)), *probe).numpy())
        return np.concatenate(rows)

    return {"loop": loop, "batched": batched, "networks": len(configs) * len(depths) * seeds}


def training_05(depths: tuple[int, ...], seeds: int, steps: int, train_set) -> dict[str, Callable]:
    """05_activations' training sweep: five activations x seeds per depth, each seed its own minibatches."""
    kw = dict(steps=steps, lr=0.03, batch_size=128, optimizer="momentum", eval_every=40)
    keys = [(act, s) for act in ACTS for s in range(seeds)]

    def nets(depth: int) -> list[models.MLP]:
        out = []
        for act, s in keys:
            torch.manual_seed(s)
            out.append(models.mlp(in_features=64, out_features=10, depth=depth, width=64, activation=act,
                                  init="xavier" if act in ("sigmoid", "tanh") else "he"))
        return out

    def loop() -> np.ndarray:
        return np.array([loop_losses(net, train_set, s, **kw)
                         for d in depths for net, (_, s) in zip(nets(d), keys, strict=True)])

    def batched() -> np.ndarray:
        out = []
        for d in depths:
            hist = sweeps.train_batched(sweeps.stack_mlps(nets(d)), train_set,
                                        generator=[torch.Generator().manual_seed(s) for _, s in keys], **kw)
            out.append(hist["loss"].numpy())
        return np.concatenate(out)

    return {"loop": loop, "batched": batched, "networks": len(depths) * len(keys)}


def training_08(depths: tuple[int, ...], seeds: int, steps: int, train_set, test_set) -> dict[str, Callable]:
    """08_residual's training sweep: plain and residual, each seed its own minibatches."""
    kw = dict(steps=steps, lr=0.02, optimizer="momentum", batch_size=64, clip=1.0, eval_every=20, test_data=test_set)

    def build(depth: int, residual: bool, seed: int) -> models.MLP:
        torch.manual_seed(seed)
        return models.mlp(in_features=64, out_features=10, depth=depth, width=32, activation="relu", init="he",
                          residual=residual, branch_scale=1 / math.sqrt(depth) if residual else None)

    grid = [(r, d) for r in (False, True) for d in depths]

    def loop() -> np.ndarray:
        return np.array([loop_losses(build(d, r, s), train_set, s, record_grad_norms=True, **kw)
                         for r, d in grid for s in range(seeds)])

    def batched() -> np.ndarray:
        out = []
        for r, d in grid:
            stacked = sweeps.stack_mlps([build(d, r, s) for s in range(seeds)])
            hist = sweeps.train_batched(stacked, train_set, record_grad_norms=True,
                                        generator=[torch.Generator().manual_seed(s) for s in range(seeds)], **kw)
            out.append(hist["loss"].numpy())
        return np.concatenate(out)

    return {"loop": loop, "batched": batched, "networks": len(grid) * seeds}


def rel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.abs(a), 1e-300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the best time counts")
    parser.add_argument("--quick", action="store_true", help="tiny sweeps, to check that the script runs")
    args = parser.parse_args()

    vg.seed(0)  # one CPU thread
    train_set, test_set = data.digits(seed=0)
    probe = (train_set[0][:256], train_set[1][:256])
    if args.quick:
        tasks = {"05 gradient profiles": gradient_task((3, 5), 2, probe),
                 "05 training": training_05((2, 3), 2, 20, train_set),
                 "08 training": training_08((2, 4), 2, 20, train_set, test_set)}
    else:
        tasks = {"05 gradient profiles": gradient_task((10, 20, 50), 5, probe),
                 "05 training": training_05((3, 20), 5, 200, train_set),
                 "08 training": training_08((4, 12, 28), 5, 300, train_set, test_set)}
    # One short run of each form first: the first autograd call, optimizer and kernels pay one-time costs.
    training_05((2,), 1, 2, train_set)["loop"]()
    training_05((2,), 1, 2, train_set)["batched"]()

    best: dict[tuple[str, str], tuple[float, float]] = {}
    results: dict[tuple[str, str], np.ndarray] = {}
    for _ in range(args.repeats):
        for name, task in tasks.items():
            for method in ("loop", "batched"):
                start, start_cpu = time.perf_counter(), time.process_time()
                results[name, method] = task[method]()
                elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                old = best.get((name, method), (math.inf, math.inf))
                best[name, method] = (min(old[0], elapsed), min(old[1], cpu))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
          f"best of {args.repeats}\n")
    print("| sweep | networks | loop wall (s) | stacked wall (s) | speed-up | loop CPU (s) | stacked CPU (s) "
          "| speed-up (CPU) | agreement |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    totals = np.zeros(4)
    disagree = []
    for name, task in tasks.items():
        (loop, loop_cpu), (stacked, stacked_cpu) = best[name, "loop"], best[name, "batched"]
        totals += (loop, stacked, loop_cpu, stacked_cpu)
        ref, new = results[name, "loop"], results[name, "batched"]
        if ref.ndim == 1:  # gradient norms
            worst = rel_diff(ref, new).max()
            agree = f"gradient norms: max rel. diff. {worst:.1e}"
        else:  # loss curves (networks, evaluations): the first is after one update
            worst = rel_diff(ref[:, 0], new[:, 0]).max()
            agree = (f"loss after step 1: max rel. diff. {worst:.1e}; "
                     f"final loss: median {np.nanmedian(rel_diff(ref[:, -1], new[:, -1])):.1e}")
        if not worst <= AGREE:
            disagree.append(name)
        print(f"| {name} | {task['networks']} | {loop:.2f} | {stacked:.2f} | {loop / stacked:.2f}x | {loop_cpu:.2f} "
              f"| {stacked_cpu:.2f} | {loop_cpu / stacked_cpu:.2f}x | {agree} |")
    loop, stacked, loop_cpu, stacked_cpu = totals
    print(f"| **all three** | | {loop:.2f} | {stacked:.2f} | {loop / stacked:.2f}x | {loop_cpu:.2f} | "
          f"{stacked_cpu:.2f} | {loop_cpu / stacked_cpu:.2f}x | |")
    print("\nTimes: best of the repeats, building the networks included in both forms. CPU time is this "
          "process's, the fairer figure on a busy machine.")
    print("Agreement: the stacked form runs the kernels autograd runs, so gradient norms agree to the last bit "
          "or to float32 rounding. Training curves agree to rounding for the first steps; over hundreds of "
          "momentum steps rounding differences grow (the loop's own curves move as much when one weight is "
          "perturbed by one rounding error), so final losses agree only statistically.")
    if disagree:
        raise SystemExit(f"the stacked form disagrees with the loop (beyond {AGREE:g} relative) in: "
                         + ", ".join(disagree))


if __name__ == "__main__":
    main()

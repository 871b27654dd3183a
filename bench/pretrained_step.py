"""Training-step throughput of HyperIQA on the pretrained tf_efficientnet_lite0 vs the demo's test_resnet.

The solver's step (forward, L1 loss, backward, Adam step) on one batch held in memory, 1 torch thread,
for each backbone x patch size x frozen_stages. Rounds alternate over all rows, so drift on a shared
machine hits every row alike; the median round is reported, and the ratio to test_resnet at that size.
patches/CPU-s divides by this process's CPU time: with 1 thread on a busy machine it is what an idle
core would give, while patches/s drops with the load.

    python bench/pretrained_step.py                       # 128, 96, 64 px, batch 16
    python bench/pretrained_step.py --patches 128 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperiqa.models import HyperIQA  # noqa: E402


def step_rate(model, opt, x, y, steps: int) -> tuple[float, float]:
    """(patches per wall second, patches per CPU second of this process)."""
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = F.l1_loss(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    n = steps * len(y)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patches", default="128,96,64", help="patch sizes, comma separated")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="timed steps per row and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [(name, frozen, size) for size in map(int, args.patches.split(","))
            for name, frozen in (("tf_efficientnet_lite0", 0), ("tf_efficientnet_lite0", 2), ("test_resnet", 0))]
    setups = {}
    for name, frozen, size in rows:
        torch.manual_seed(0)
        model = HyperIQA(name, pretrained=name != "test_resnet", frozen_stages=frozen, patch_size=size)
        opt = torch.optim.Adam([{"params": model.backbone_parameters(), "lr": 2e-5},
                                {"params": model.head_parameters(), "lr": 2e-4}])
        x, y = torch.randn(args.batch, 3, size, size), torch.rand(args.batch)
        step_rate(model, opt, x, y, 1)  # warm-up: allocator, first-call overheads
        setups[name, frozen, size] = (model, opt, x, y)
    rates = {row: [] for row in rows}
    for _ in range(args.rounds):
        for row in rows:
            rates[row].append(step_rate(*setups[row], args.steps))
    print(f"HyperIQA training step, batch {args.batch}, {args.threads} thread(s), median of {args.rounds} "
          f"rounds x {args.steps} steps (torch {torch.__version__})")
    print("| patch | backbone | frozen_stages | patches/s | patches/CPU-s | / test_resnet (CPU-s) |")
    print("|---|---|---|---|---|---|")
    for name, frozen, size in rows:
        wall, cpu = (statistics.median(r[k] for r in rates[name, frozen, size]) for k in (0, 1))
        ref = statistics.median(r[1] for r in rates["test_resnet", 0, size])
        print(f"| {size} | {name} | {frozen} | {wall:.1f} | {cpu:.1f} | {cpu / ref:.2f} |")


if __name__ == "__main__":
    main()

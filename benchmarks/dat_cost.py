"""Issue 20, item 4: what one DAT training step costs over the passes it cannot avoid, and minutes per epoch.

A DAT step at level ``T`` (``ebmlens.train.objectives.DAT`` + the optimizer step, model in eval mode as
the trainer runs it, batch ``2B``: ``B`` real images + ``B`` AT images) does

* **neg**: ``T`` input-gradient passes on the ``B`` negatives (``move_negatives``),
* **at**: the AT attack's input-gradient passes on the ``B`` AT images (``adversarial_examples``),
* **train**: one forward of ``3B`` images (real, negatives, adversarial), the backward to the weights and
  the SGD step.

This script times the whole step and each part separately (interleaved ABBA after a warm-up, CPU time of
this process on the CPU, see ``_common.py``) and prints ``overhead T=...: R`` with
``R = median(step) / (median(neg) + median(at) + median(train))`` (target R <= 1.10: the seeds, the AUC,
the curriculum and the bookkeeping cost at most 10%). Then minutes per trainer epoch (50,000 training
images = 50,000 / 2B steps) at ``T = 10 / 20 / 40``, **extrapolated** from the timed parts (``train + at
+ T * one negative pass``, times the measured overhead), next to the bundled model's 3-step PGD-AT epoch
(50,000 / 128 steps of ``pgd_at`` in train mode, timed the same way).

    python benchmarks/dat_cost.py --quick        # resnet-tiny, B 16, T 0 and 4: < 1 min
    python benchmarks/dat_cost.py                # the bundled model, B 128, T 0 and 10, 3 AT steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_model, fmt_times, interleaved, machine, set_threads  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ebmlens:cifar10-l2-small")
    p.add_argument("--batch-size", type=int, default=128, help="B: images per half (DAT: 128 real + 128 AT)")
    p.add_argument("--levels", default="0,10", help="levels T timed (comma-separated)")
    p.add_argument("--attack-steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.model, a.batch_size, a.levels, a.repeats = "resnet-tiny", 16, "0,4", 3
    set_threads(a.threads)
    from ebmlens.train import objectives as O
    from ebmlens.train._dat import dat_loss, move_negatives, new_state
    from ebmlens.train._losses import adversarial_examples

    print(machine())
    model = build_model(a.model, a.device)
    b, dev = a.batch_size, a.device
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2 * b, *model.input_shape, generator=g).to(dev)
    y = torch.randint(0, model.num_classes, (2 * b,), generator=g).to(dev)
    seeds = torch.rand(b, *model.input_shape, generator=g).to(dev)
    attack_dat = O.AttackConfig("L2", 0.5, a.attack_steps, 0.1, random_start=False)
    attack_at = O.AttackConfig("L2", 0.5, a.attack_steps)  # the bundled model's recipe (random start)
    opt = torch.optim.SGD(model.classifier.parameters(), lr=1e-12, momentum=0.9)  # tiny lr: weights barely move

    def sgd(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    obj = O.DAT(negatives=lambda m, yy, generator=None: seeds[:len(yy)].clone(), at_weight=1.0)
    results = {}
    for t in [int(v) for v in a.levels.split(",")]:
        state = {**new_state(0), "T": t}
        xr, yr, x2, y2 = x[:b], y[:b], x[b:], y[b:]
        xn = move_negatives(model, seeds, yr, t)
        xa = adversarial_examples(model, x2, y2, attack_dat)
        model.classifier.eval()  # DAT: BatchNorm frozen
        cands = {
            f"step T={t}": lambda: sgd(obj(model, x, y, attack_dat, state, generator=torch.Generator())[0]),
            f"neg T={t}": lambda: move_negatives(model, seeds, yr, t),
            "at": lambda: adversarial_examples(model, x2, y2, attack_dat),
            "train": lambda: sgd(dat_loss(model, xr, xn, yr, xa, y2).loss),
        }
        if t == 0:
            del cands[f"neg T={t}"]
        times = interleaved(cands, a.repeats, device=dev)
        for tm in times.values():
            print(fmt_times(tm))
        parts = sum(times[k].median for k in times if not k.startswith("step"))
        step = times[f"step T={t}"]
        lo, hi = step.min / parts, step.max / parts
        results[t] = (step.median, parts, times)
        print(f"overhead T={t}: {step.median / parts:.3f} (band {lo:.3f}-{hi:.3f}; step / sum of parts)")
    # the bundled 3-step PGD-AT step, train mode, batch 128 (= B)
    model.classifier.train()
    at_times = interleaved({"pgd-at step": lambda: sgd(O.pgd_at(model, x[:b], y[:b], attack_at,
                                                                generator=torch.Generator()))},
                           a.repeats, device=dev)
    model.classifier.eval()
    print(fmt_times(at_times["pgd-at step"]))
    # extrapolation: one negative pass from the largest timed level
    tmax = max(k for k in results if k > 0) if any(k > 0 for k in results) else None
    t0 = min(results)
    _, _, tt = results[t0]
    base = tt["at"].median + tt["train"].median
    per_pass = results[tmax][2][f"neg T={tmax}"].median / tmax if tmax else float("nan")
    over = statistics.median([s / p for s, p, _ in results.values()])
    steps_dat, steps_at = 50_000 // (2 * b), 50_000 // b
    print(f"\none negative pass (B={b}): {per_pass:.3f} s; at + train: {base:.3f} s; median overhead {over:.3f}")
    print(f"minutes per epoch (50,000 training images; {a.device}, {a.threads} thread(s); extrapolated from the "
          "timed parts, CPU time):")
    print(f"  PGD-AT {a.attack_steps}-step (bundled recipe, {steps_at} steps of {b}): "
          f"{at_times['pgd-at step'].median * steps_at / 60:.1f} min")
    for t in (10, 20, 40):
        m = (base + t * per_pass) * over * steps_dat / 60
        print(f"  DAT T={t} ({steps_dat} steps of {b} + {b}): {m:.1f} min")


if __name__ == "__main__":
    main()

"""Issue 20, item 2: DAT's protocol without leaking the test set - choose the sampler's step count by FD
on a *selection* split of training images, then report on test images.

1. **selection**: for each step count in ``--steps`` the preset (default ``dat2025``; its ``steps``
   knob) samples ``--n-per-class`` per class with seed ``--select-seed``; FD in the judge's features
   against ``--selection`` training images (a seeded subset of the train split, never the report's
   reference). The step count with the lowest FD is chosen.
2. **report**: the chosen count on seeds ``--report-seeds`` (others than the selection seed): FD against
   the 10,000 **test** images (never seen by the selection), judged accuracy; the FD of every other
   count on the same seeds is printed beside it, marked as not chosen, so the cost of choosing on
   another split is visible.

``--export-npz PATH`` writes the report samples of the first report seed for OpenAI's guided-diffusion
evaluator: ``arr_0`` uint8 NHWC, ``arr_1`` int64 labels (nothing else; an opt-in file, not extra keys
in ``samples.npz``).

    python benchmarks/select_steps.py --quick                       # smoke run
    python benchmarks/select_steps.py --model file:runs/dat/epoch_001.pt --stats \\
        ebmlens/models/bundled/cifar10-l2-small.stats.safetensors --steps 11,22,33,44
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import draw, judge_features  # noqa: E402

import ebmlens  # noqa: E402
from ebmlens import metrics as M  # noqa: E402
from ebmlens._io import atomic_save_npz, atomic_write_json  # noqa: E402
from ebmlens.data import default_cifar10_path, load_data  # noqa: E402
from ebmlens.metrics.features import extractor  # noqa: E402
from ebmlens.runs.outputs import to_uint8_nhwc  # noqa: E402
from ebmlens.sampling import presets  # noqa: E402


def fd_of(judge, u8: np.ndarray, mom) -> tuple[float, float, np.ndarray]:
    feats, logits = judge_features(judge, u8)
    mu, sigma = M.feature_stats(feats)
    return M.frechet_distance(mu, sigma, *mom), logits.argmax(1).numpy()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ebmlens:cifar10-l2-small")
    p.add_argument("--stats", default=None, help="class statistics (default: the model's bundled ones)")
    p.add_argument("--judge", default="ebmlens:cifar10-standard-small")
    p.add_argument("--data", default=None)
    p.add_argument("--preset", default="dat2025")
    p.add_argument("--steps", default="11,22,33,44")
    p.add_argument("--n-per-class", type=int, default=20)
    p.add_argument("--selection", type=int, default=10000, help="training images of the selection reference")
    p.add_argument("--select-seed", type=int, default=0)
    p.add_argument("--report-seeds", default="1")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export-npz", default=None)
    p.add_argument("--out", default=None, help="a JSON file for the result")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.n_per_class, a.selection = "2,4", 2, 500
    torch.set_num_threads(a.threads)
    spec = a.data or f"cifar10:{default_cifar10_path()}"
    model = ebmlens.load_model(a.model).eval()
    from ebmlens.stats import coerce_stats

    stats = coerce_stats(a.stats, "--stats") if a.stats else ebmlens.bundled_stats(a.model)
    judge = extractor(a.judge)
    train, test = load_data(spec, "train"), load_data(spec, "test")
    sel = np.random.default_rng(777).choice(len(train), min(a.selection, len(train)), replace=False)
    sel_mom = M.feature_stats(judge_features(judge, train.images[np.sort(sel)])[0])
    test_mom = M.feature_stats(judge_features(judge, test.images)[0])
    n = 10 * a.n_per_class
    y = torch.arange(n) % 10
    counts = [int(s) for s in a.steps.split(",")]

    def sample(k: int, seed: int) -> np.ndarray:
        return to_uint8_nhwc(draw(model, presets.get(a.preset, stats=stats, steps=k), y, seed, a.batch_size)["images"])

    selection = {k: fd_of(judge, sample(k, a.select_seed), sel_mom)[0] for k in counts}
    chosen = min(selection, key=selection.get)
    report: dict = {}
    for s in [int(v) for v in a.report_seeds.split(",")]:
        for k in counts:
            u8 = sample(k, s)
            fd, pred = fd_of(judge, u8, test_mom)
            acc = float((pred == y.numpy()).mean())
            report.setdefault(k, []).append({"seed": s, "fd_test": fd, "judged_accuracy": acc})
            if a.export_npz and k == chosen and s == int(a.report_seeds.split(",")[0]):
                atomic_save_npz(a.export_npz, arr_0=u8, arr_1=y.numpy().astype(np.int64))
    for k in counts:
        mark = "chosen" if k == chosen else "not chosen"
        fds = [r["fd_test"] for r in report[k]]
        acc = [r["judged_accuracy"] for r in report[k]]
        print(f"steps {k:3d}: FD selection {selection[k]:8.2f} | report (test) FD {np.mean(fds):8.2f} "
              f"judged acc {np.mean(acc):.3f}  [{mark}]")
    res = {"model": a.model, "preset": a.preset, "judge": a.judge, "n": n, "selection_fd": selection,
           "chosen_steps": chosen, "report": report, "selection_images": len(sel), "select_seed": a.select_seed}
    print(f"chosen steps: {chosen} (FD on {len(sel)} training images, seed {a.select_seed}); "
          f"report FD on the 10,000 test images: {np.mean([r['fd_test'] for r in report[chosen]]):.2f}")
    if a.out:
        atomic_write_json(a.out, json.loads(json.dumps(res, default=float)))
    return res


if __name__ == "__main__":
    main()

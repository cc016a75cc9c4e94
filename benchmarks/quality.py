"""Fidelity and diversity of every preset, judged by a network that is not the sampled model (issue 14).

Every preset runs on the same labels (class-balanced, ``--n-per-class`` per class) and the same seeds
(``--seeds``: 0, 1, ...; sample ``i`` of seed ``s`` draws its noise from ``SampleStreams(s, [i])``) on
the sampled model (``--model``, default the bundled robust ``ebmlens:cifar10-l2-small`` with its
bundled class statistics). A *judge* (``--judge``, default the bundled standard
``ebmlens:cifar10-standard-small``; never seen by any sampler) measures per run:

* judged accuracy (judge's argmax == target), ``fd`` (Frechet distance in the judge's penultimate
  features against the training reference), precision / recall (k = 3), density / coverage (k = 5)
  against a class-balanced set of *training* images of the same size as the samples (the manifold
  reference; a different one per seed), within-class diversity (mean ``1 - cos`` of judge features);
* under the sampled model: mean ``E(x, y)`` after the last stage, gradient evaluations per sample (rows
  of every forward pass run with gradients, over the number of samples) and wall seconds.

Reference row: real CIFAR-10 **test** images (class-balanced, the same count, a different subset per
seed; used for nothing else), measured exactly like the samples. Intervals: 95% percentile
bootstrap of the mean over seeds (2000 resamples of the seeds; one seed gives a point).

Sweep (``--sweep 0,0.25,0.5,1``): each preset with its step counts scaled by each factor (``0``: its
initializer alone), on every seed; ``frontier.png`` plots judged accuracy against recall and against
FD per preset as the budget grows; the main table shows 1x (or the largest factor swept). Memorisation
(the table's samples of the first seed): each sample's distance
to its nearest training image (of ``--train-subset`` training images) in pixels (L2 in [0, 1]) and
in judge features, against the same for the real test images; ``memorisation_{pixels,features}.png``
show the 10 closest sample/training pairs (top row samples, bottom row their nearest training image).

Output in ``--out``: ``quality.json``, ``quality.md`` (tables), ``frontier.png``, the memorisation
grids and ``grid_<preset>.png`` (first seed, 1x, 10 per class).

    python benchmarks/quality.py --n-per-class 20 --seeds 3 --out runs/quality   # the docs' run
    python benchmarks/quality.py --quick --out /tmp/q                            # smoke run, < 60 s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import ebmlens
from ebmlens import metrics as M
from ebmlens._io import atomic_write_bytes, atomic_write_json, atomic_write_text, fingerprint, jsonable, save_figure
from ebmlens.data import default_cifar10_path, load_data
from ebmlens.metrics.features import extract, extractor
from ebmlens.rng import SampleStreams
from ebmlens.runs.labels import balanced_labels
from ebmlens.runs.outputs import make_grid, png_bytes, to_uint8_nhwc
from ebmlens.sampling import Pipeline, presets

#: The step knobs of each preset that the sweep scales.
STEP_KNOBS = {"santurkar2019": {"steps": 60}, "jempp": {"steps": 10}, "robust-jem-energy": {"steps": 50},
              "robust-jem": {"attack_steps": 15, "steps": 50}, "mirza2024": {"steps": 50}, "dat2025": {"steps": 22},
              "mixture-ascent": {"steps": 22}}
#: ours: compared against every published preset (``dominance`` in the JSON and the tables).
OURS = "mixture-ascent"
#: measures where higher is better (the rest of DOMINANCE_MEASURES: lower is better).
HIGHER_BETTER = ("judged_accuracy", "precision", "recall", "density", "coverage", "diversity")
DOMINANCE_MEASURES = HIGHER_BETTER + ("fd", "grad_evals")
MEASURES = ("judged_accuracy", "fd", "precision", "recall", "density", "coverage", "diversity", "energy",
            "grad_evals", "grad_evals_unshrunk", "seconds")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ebmlens:cifar10-l2-small", help="the sampled (robust) model")
    p.add_argument("--stats", default=None, help="class statistics .safetensors (default: the model's bundled ones)")
    p.add_argument("--judge", default="ebmlens:cifar10-standard-small", help="the judge: any model spec, not --model")
    p.add_argument("--data", default=None, help="CIFAR-10 spec (default: the shared archive)")
    p.add_argument("--presets", default=",".join(STEP_KNOBS))
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (first-seed, first-seed + 1, ...)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first seed (choose settings on one, report on others)")
    p.add_argument("--sweep", default="0,0.25,0.5,1", help="step-budget factors (1 = published)")
    p.add_argument("--train-subset", type=int, default=10000, help="training images for FD and memorisation")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--samples-cache", default=None,
                   help="folder keeping each run's samples (uint8) and costs: a second "
                   "invocation with another --judge reuses them instead of sampling again")
    p.add_argument("--quick", action="store_true", help="2 per class, 1 seed, sweep 0,0.1 (the table shows 0.1x), "
                   "600 training images")
    a = p.parse_args(argv)
    if a.quick:
        a.n_per_class, a.seeds, a.sweep, a.train_subset = 2, 1, "0,0.1", 600
    if a.judge == a.model:
        p.error("--judge must not be the sampled --model (an independent judge)")
    return a


class PassCounter:
    """Counts the rows of every forward pass of ``module`` run with gradients enabled."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = self.calls = 0
        self._h = module.register_forward_hook(self._hook)

    def _hook(self, _m, inputs, _out) -> None:
        if torch.is_grad_enabled() and inputs[0].requires_grad:
            self.rows += int(inputs[0].shape[0])
            self.calls += 1

    def close(self) -> None:
        self._h.remove()


def pipeline(name: str, factor: float, stats, mixture=None) -> Pipeline:
    """Preset ``name`` with its step knobs scaled by ``factor`` (0: the initializer alone); ours takes
    the ``mixture`` statistics."""
    st = mixture if name == OURS else stats
    full = presets.get(name, stats=st)
    if factor == 0:
        return Pipeline(full.init, (), mode=full.mode)
    return presets.get(name, stats=st, **{k: max(1, round(factor * v)) for k, v in STEP_KNOBS[name].items()})


def draw(model, pipe, y: torch.Tensor, seed: int, batch_size: int) -> dict:
    counter = PassCounter(model.classifier)
    images, energy, t0, full_rows = [], [], time.perf_counter(), 0
    try:
        for s in range(0, len(y), batch_size):
            idx = list(range(s, min(s + batch_size, len(y))))
            calls = counter.calls
            out = pipe(model, y[idx], generator=SampleStreams(seed, idx))
            full_rows += (counter.calls - calls) * len(idx)   # as if no stage shrank its batch
            images.append(out.images.detach().cpu())
            energy.append(out.trace[-1].joint_energy)
    finally:
        counter.close()
    return {"images": torch.cat(images), "energy": float(torch.cat(energy).mean()),
            "grad_evals": counter.rows / len(y), "grad_evals_unshrunk": full_rows / len(y),
            "seconds": time.perf_counter() - t0}


def cached_draw(a, model, name: str, f: float, seed: int, y: torch.Tensor, make_pipe) -> tuple[dict, np.ndarray]:
    """:func:`draw` (uint8 images and costs), read from / written to ``--samples-cache`` when given (keyed by
    the model, the pipeline's config with its statistics' fingerprints, seed, n and batch size)."""
    pipe = make_pipe()
    cfg = json.dumps(jsonable(pipe.config()), sort_keys=True)
    key = f"{a.model}|{a.stats}|{name}|{f}|{seed}|{len(y)}|{a.batch_size}|{fingerprint(cfg)}"
    path = None
    if a.samples_cache:
        safe = "".join(c if c.isalnum() or c in "-." else "_" for c in f"{name}-x{f:g}-s{seed}-n{len(y)}")
        path = Path(a.samples_cache) / f"{safe}-{fingerprint(key)[:8]}.npz"
        if path.exists():
            with np.load(path) as z:
                if str(z["key"]) == key:
                    return {k: float(z[k]) for k in ("energy", "grad_evals", "grad_evals_unshrunk", "seconds")}, z["u8"]
    r = draw(model, pipe, y, seed, a.batch_size)
    u8 = to_uint8_nhwc(r["images"])
    if path is not None:
        from ebmlens._io import atomic_save_npz

        atomic_save_npz(path, u8=u8, key=np.array(key), **{k: np.array(r[k]) for k in
                                                          ("energy", "grad_evals", "grad_evals_unshrunk", "seconds")})
    return r, u8


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of each class (sorted by class, then interleaved like the samples' labels)."""
    g = np.random.default_rng(seed)
    parts = [g.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.stack(parts, 1).reshape(-1)   # c0, c1, ..., c9, c0, ...: labels[i] = i % 10


def judge_measures(judge, x_u8: np.ndarray, y: np.ndarray, ref_feats: torch.Tensor, train_mom) -> dict:
    """Judged accuracy, FD, P/R, D/C, diversity of uint8 NHWC images in the judge's features."""
    feats, logits = judge_features(judge, x_u8)
    mu, sigma = M.feature_stats(feats)
    pr, dc = M.precision_recall(feats, ref_feats, 3), M.density_coverage(feats, ref_feats, 5)
    div = M.within_class_diversity(feats, y)
    return {"judged_accuracy": float((logits.argmax(1).numpy() == y).mean()),
            "fd": M.frechet_distance(mu, sigma, *train_mom), "precision": pr.precision, "recall": pr.recall,
            "density": dc.density, "coverage": dc.coverage, "diversity": div.overall,
            "diversity_per_class": div.per_class, "features": feats}


def judge_features(judge, x_u8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from ebmlens.data import ImageData

    data = ImageData(x_u8, np.zeros(len(x_u8), np.int64), [str(i) for i in range(10)], "benchmark")
    f, z, _ = extract(judge, data, 500, False, "judge", local=True)
    return f, z


def interval(values: list[float], n_boot: int, seed: int = 0) -> dict:
    v = np.asarray(values, np.float64)
    if len(v) == 1:
        return {"mean": float(v[0]), "lo": float(v[0]), "hi": float(v[0]), "per_seed": v.tolist()}
    g = np.random.default_rng(seed)
    means = v[g.integers(0, len(v), (n_boot, len(v)))].mean(1)
    return {"mean": float(v.mean()), "lo": float(np.percentile(means, 2.5)), "hi": float(np.percentile(means, 97.5)),
            "per_seed": v.tolist()}


def nearest(a: torch.Tensor, b: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of each row of ``a`` to its nearest row of ``b`` and that row's index."""
    d, i = [], []
    for s in range(0, len(a), chunk):
        m = torch.cdist(a[s:s + chunk].double(), b.double()).min(1)
        d.append(m.values)
        i.append(m.indices)
    return torch.cat(d), torch.cat(i)


def closest_grid(samples_u8: np.ndarray, train_u8: np.ndarray, dist: torch.Tensor, idx: torch.Tensor, k: int = 10):
    order = torch.argsort(dist)[:k].numpy()
    imgs = np.concatenate([samples_u8[order], train_u8[idx.numpy()[order]]])
    return make_grid(imgs, np.repeat([0, 1], len(order)), [0, 1], per_class=k), order


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    spec = a.data or f"cifar10:{default_cifar10_path()}"
    model = ebmlens.load_model(a.model).to(dev).eval()
    from ebmlens.stats import coerce_stats

    stats = coerce_stats(a.stats, "--stats") if a.stats else ebmlens.bundled_stats(a.model)
    if stats is None:
        raise SystemExit(f"{a.model} ships no class statistics: pass --stats FILE.safetensors")
    judge = extractor(a.judge, device=dev)
    train, test = load_data(spec, "train"), load_data(spec, "test")
    names = [n.strip() for n in a.presets.split(",") if n.strip()]
    factors = sorted({float(f) for f in a.sweep.split(",")})
    main_factor = 1.0 if 1.0 in factors else factors[-1]   # the table's budget: the published one if swept
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    mixture = None
    if OURS in names:   # ours fits its class mixture on the training split (cached); --quick: a small one
        from ebmlens.stats import class_mixture

        mixture = class_mixture(train, **({"n": 2000, "components": 2, "rank": 8} if a.quick else {}))
    n = 10 * a.n_per_class
    y = torch.as_tensor(balanced_labels(n, list(range(10)))).to(dev)
    y_np = y.cpu().numpy()

    sub = np.random.default_rng(12345).choice(len(train), min(a.train_subset, len(train)), replace=False)
    train_u8 = train.images[sub]
    train_feats, _ = judge_features(judge, train_u8)
    train_mom = M.feature_stats(train_feats)
    manifold_ref = {s: judge_features(judge, train.images[balanced_subset(train.labels, a.n_per_class, 1000 + s)])[0]
                    for s in seeds}

    rows: dict[str, dict] = {}
    per_run: list[dict] = []
    for s in seeds:   # the reference row: real test images, measured as the samples are
        idx = balanced_subset(test.labels, a.n_per_class, 2000 + s)
        m = judge_measures(judge, test.images[idx], test.labels[idx], manifold_ref[s], train_mom)
        with torch.no_grad():   # E(x, y) of real images under the sampled model
            x = torch.from_numpy(test.images[idx]).permute(0, 3, 1, 2).float().div(255).to(dev)
            yt = torch.from_numpy(test.labels[idx]).to(dev)
            m["energy"] = float(model.joint_energy_from_logits(model(x), yt).mean())
        per_run.append({"row": "real test images", "factor": None, "seed": s,
                        **{k: v for k, v in m.items() if k != "features"}})
    keep: dict[str, dict] = {}
    for s in seeds:   # seed-major: a killed run still leaves whole seeds in runs_partial.json
        for name in names:
            for f in factors:
                r, u8 = cached_draw(a, model, name, f, s, y, lambda: pipeline(name, f, stats, mixture))
                m = judge_measures(judge, u8, y_np, manifold_ref[s], train_mom)
                if f == main_factor and s == seeds[0]:
                    keep[name] = {"u8": u8, "features": m["features"]}
                rec = {"row": name, "factor": f, "seed": s, "energy": r["energy"], "grad_evals": r["grad_evals"],
                       "grad_evals_unshrunk": r["grad_evals_unshrunk"], "seconds": r["seconds"],
                       **{k: v for k, v in m.items() if k != "features"}}
                per_run.append(rec)
                print(f"{name:18s} x{f:<5g} seed {s}: acc {rec['judged_accuracy']:.3f} fd {rec['fd']:.2f} "
                      f"P {rec['precision']:.3f} R {rec['recall']:.3f} D {rec['density']:.3f} C {rec['coverage']:.3f} "
                      f"div {rec['diversity']:.3f} E {rec['energy']:.2f} grads {rec['grad_evals']:.1f} "
                      f"{rec['seconds']:.1f}s", flush=True)
                atomic_write_json(out / "runs_partial.json", jsonable(per_run))

    def summary(row: str, factor) -> dict:
        runs = [r for r in per_run if r["row"] == row and r["factor"] == factor]
        return {k: interval([r[k] for r in runs], a.bootstrap) for k in MEASURES if k in runs[0]}

    rows["real test images"] = summary("real test images", None)
    sweep = {name: {str(f): summary(name, f) for f in factors} for name in names}
    for name in names:
        rows[name] = sweep[name][str(main_factor)]

    # memorisation: nearest training image in pixels and judge features, samples vs real test images
    test_idx = balanced_subset(test.labels, a.n_per_class, 2000 + seeds[0])
    test_u8 = test.images[test_idx]
    train_px = torch.from_numpy(train_u8.reshape(len(train_u8), -1)).float() / 255
    def near(u8, feats):
        px = torch.from_numpy(u8.reshape(len(u8), -1)).float() / 255
        return nearest(px, train_px), nearest(feats, train_feats)
    (tp, _), (tf, _) = near(test_u8, judge_features(judge, test_u8)[0])
    memo = {"real test images": {"pixels_median": float(tp.median()), "features_median": float(tf.median())}}
    pairs = {"pixels": [], "features": []}
    for name, k in keep.items():
        (dp, ip), (df, i_f) = near(k["u8"], k["features"])
        memo[name] = {"pixels_median": float(dp.median()), "features_median": float(df.median()),
                      "pixels_below_test_min": float((dp < tp.min()).double().mean()),
                      "features_below_test_min": float((df < tf.min()).double().mean())}
        pairs["pixels"] += [(float(d), name, k["u8"][j], train_u8[int(ip[j])]) for j, d in enumerate(dp)]
        pairs["features"] += [(float(d), name, k["u8"][j], train_u8[int(i_f[j])]) for j, d in enumerate(df)]
    closest = {}
    for space, ps in pairs.items():
        ps = sorted(ps, key=lambda p: p[0])[:10]
        if ps:
            imgs = np.stack([p[2] for p in ps] + [p[3] for p in ps])
            grid = make_grid(imgs, np.repeat([0, 1], len(ps)), [0, 1], per_class=len(ps))
            atomic_write_bytes(out / f"memorisation_{space}.png", png_bytes(grid))
        closest[space] = [{"distance": p[0], "preset": p[1]} for p in ps]
    for name, k in keep.items():
        atomic_write_bytes(out / f"grid_{name}.png", png_bytes(make_grid(k["u8"], y_np, list(range(10)))))

    dom = dominance(rows, sweep, factors) if OURS in rows else None
    plot_frontier(sweep, rows["real test images"], out / "frontier.png")
    result = {"command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else os.sys.argv[1:]),
              "model": a.model, "judge": judge.network, "judge_layer": judge.layer, "data": spec,
              "n_per_class": a.n_per_class, "n_samples": n, "seeds": seeds, "sweep_factors": factors,
              "table_factor": main_factor,
              "step_knobs": {k: STEP_KNOBS[k] for k in names},
              "reference": {"real_row": "CIFAR-10 test images, class-balanced, n per class, subset per seed",
                            "manifold": "CIFAR-10 training images, class-balanced, n per class, subset per seed "
                                        "(precision/recall k=3, density/coverage k=5)",
                            "fd": f"{len(sub)} CIFAR-10 training images (fixed subset)",
                            "memorisation": f"the same {len(sub)} training images"},
              "interval": "95% percentile bootstrap of the mean over seeds", "rows": rows, "sweep": sweep,
              "memorisation": memo, "closest_pairs": closest, "dominance": dom, "runs": per_run,
              "machine": f"{platform.processor() or platform.machine()}, {a.threads} threads, {a.device}",
              "versions": {"torch": torch.__version__, "ebmlens": ebmlens.__version__},
              "seconds": time.perf_counter() - t_start}
    atomic_write_json(out / "quality.json", jsonable(result))
    atomic_write_text(out / "quality.md", markdown(result))
    print(markdown(result))
    return result


def dominance(rows: dict, sweep: dict, factors: list[float]) -> dict:
    """Ours against each published preset at the table's budget: per measure ``better`` / ``worse`` when
    the 95% intervals do not overlap (means when there is one seed), else ``tie``; and the issue's
    side conditions (judged accuracy >= 0.95, diversity >= 0.70x real, recall >= ours at 0 steps, FD below
    every published sweep point whose judged accuracy is >= ours - 0.01)."""
    ours, real = rows[OURS], rows["real test images"]

    def cmp(a: dict, b: dict, k: str) -> str:
        hi = k in HIGHER_BETTER
        if a["lo"] > b["hi"] or (a["lo"] == a["hi"] and b["lo"] == b["hi"] and a["mean"] > b["mean"]):
            return "better" if hi else "worse"
        if a["hi"] < b["lo"] or (a["lo"] == a["hi"] and b["lo"] == b["hi"] and a["mean"] < b["mean"]):
            return "worse" if hi else "better"
        return "tie"

    per = {name: {k: cmp(ours[k], row[k], k) for k in DOMINANCE_MEASURES}
           for name, row in rows.items() if name not in (OURS, "real test images")}
    acc = ours["judged_accuracy"]["mean"]
    fd_rivals = [(name, f, by[f]["fd"]["mean"]) for name, by in sweep.items() if name != OURS for f in by
                 if by[f]["judged_accuracy"]["mean"] >= acc - 0.01]
    zero = sweep[OURS].get("0.0")
    conditions = {
        "judged_accuracy >= 0.95": acc >= 0.95,
        "diversity >= 0.70 x real": ours["diversity"]["mean"] >= 0.70 * real["diversity"]["mean"],
        "recall >= own init": zero is None or ours["recall"]["mean"] >= zero["recall"]["mean"],
        "FD below every published sweep point at >= its accuracy - 0.01":
            all(ours["fd"]["mean"] < fd for _, _, fd in fd_rivals),
        "grad_evals <= 22": ours["grad_evals"]["mean"] <= 22,
    }
    return {"versus": per, "conditions": conditions,
            "dominates": [n for n, v in per.items() if "worse" not in v.values() and "better" in v.values()],
            "fd_rivals": [{"preset": n, "factor": float(f), "fd": fd} for n, f, fd in fd_rivals]}


def _fmt(iv: dict, digits: int) -> str:
    if iv["lo"] == iv["hi"]:
        return f"{iv['mean']:.{digits}f}"
    return f"{iv['mean']:.{digits}f} [{iv['lo']:.{digits}f}, {iv['hi']:.{digits}f}]"


def markdown(r: dict) -> str:
    cols = [("judged_accuracy", "judged acc.", 3), ("fd", "FD (judge)", 1), ("precision", "precision", 3),
            ("recall", "recall", 3), ("density", "density", 3), ("coverage", "coverage", 3),
            ("diversity", "diversity", 3), ("energy", "E(x, y)", 2), ("grad_evals", "grads/sample", 1),
            ("seconds", "seconds", 1)]
    lines = [f"n = {r['n_samples']} ({r['n_per_class']} per class), seeds {r['seeds']}, model {r['model']}, "
             f"budget {r['table_factor']:g}x of each preset's steps, "
             f"judge {r['judge']} ({r['judge_layer']}); {r['interval']}.", "",
             "| row | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[k], d) if k in row else "" for k, _, d in cols) + " |")
    lines += ["", "Sweep (mean over seeds): judged accuracy / recall / FD / diversity per step-budget factor", "",
              "| preset | " + " | ".join(f"x{f:g}" for f in r["sweep_factors"]) + " |",
              "|---" * (len(r["sweep_factors"]) + 1) + "|"]
    for name, by in r["sweep"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{by[str(f)]['judged_accuracy']['mean']:.3f} / {by[str(f)]['recall']['mean']:.3f} / "
            f"{by[str(f)]['fd']['mean']:.1f} / {by[str(f)]['diversity']['mean']:.3f}"
            for f in r["sweep_factors"]) + " |")
    lines += ["", f"Memorisation (seed {r['seeds'][0]}, {r['table_factor']:g}x): "
              "median distance to the nearest training image", "",
              "| row | pixels (L2) | judge features | share closer than the closest test image (px / feat) |",
              "|---|---|---|---|"]
    for name, m in r["memorisation"].items():
        extra = (f"{m['pixels_below_test_min']:.3f} / {m['features_below_test_min']:.3f}"
                 if "pixels_below_test_min" in m else "")
        lines.append(f"| {name} | {m['pixels_median']:.2f} | {m['features_median']:.2f} | {extra} |")
    if r.get("dominance"):
        d = r["dominance"]
        keys = list(next(iter(d["versus"].values()), {}))
        lines += ["", f"{OURS} against each published preset at {r['table_factor']:g}x (better / worse: 95% intervals "
                  "apart; tie: they overlap)", "", "| preset | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(v[k] for k in keys) + " |" for n, v in d["versus"].items()]
        lines += ["", "Conditions: " + "; ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in d["conditions"].items())]
    return "\n".join(lines) + "\n"


def plot_frontier(sweep: dict, real: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "recall", "recall (k=3, judge features)"),
                           (axes[1], "fd", "FD in judge features")):
        for name, by in sweep.items():
            fs = sorted(by, key=float)
            xs = [by[f][key]["mean"] for f in fs]
            ys = [by[f]["judged_accuracy"]["mean"] for f in fs]
            line, = ax.plot(xs, ys, "-", marker="o", label=name)
            for f, x_, y_ in zip(fs, xs, ys):
                ax.annotate(f"{float(f):g}x", (x_, y_), fontsize=7, color=line.get_color(),
                            xytext=(3, 3), textcoords="offset points")
        ax.plot([real[key]["mean"]], [real["judged_accuracy"]["mean"]], "k*", ms=12, label="real test images")
        ax.set_xlabel(label)
        ax.set_ylabel("judged accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Presets as the step budget grows (labels: fraction of published steps)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()

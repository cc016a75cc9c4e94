"""The golden record: sample hashes and report/metric numbers on the suite's fixtures, taken before the
one-loop redesign (issue 19), so that every later step can show it changed no number.

    python tests/golden/make_golden.py            # (re)write tests/golden/golden.json
    python tests/golden/make_golden.py --check    # compare, print every difference, exit 1 on any

``tests/test_golden.py`` runs :func:`compute` and compares with the file: sample hashes exactly, report
numbers to a relative 1e-6 (a float-order change in a reduction may move a last bit; say so in the
commit that does it). Regenerate only when a change of numbers is intended and said in CHANGELOG.
One thread, CPU, float32; about 20 s.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
GOLDEN = HERE / "golden.json"

#: short versions of every preset that needs no fitted mixture (the preset's update rule, fewer steps)
PRESETS = {
    "santurkar2019": {"steps": 4},
    "jempp": {"steps": 2, "inner_steps": 2},
    "robust-jem-energy": {"steps": 3, "inner_steps": 2},
    "robust-jem": {"attack_steps": 3, "steps": 2, "inner_steps": 2},
    "mirza2024": {"steps": 4},
    "dat2025": {"steps": 4},
}
#: keys of a report that are not results (paths that differ per checkout, versions, timings)
VOLATILE = {"source", "versions", "seconds", "time", "wall_s", "elapsed", "date", "created", "host", "timing",
            "timings"}


def _sha(a) -> str:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _clean(d):
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items() if k not in VOLATILE}
    if isinstance(d, list):
        return [_clean(v) for v in d]
    return d


def _report(text: str) -> dict:
    return _clean(json.loads(text))


def compute(cifar_spec: str) -> dict:
    import ebmlens
    from ebmlens import analysis, metrics
    from ebmlens.attacks import Geometry, get_attack
    from ebmlens.data import load_data
    from ebmlens.sampling import presets

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict = {}
        model = ebmlens.load_model("ebmlens:cifar10-l2-small")
        stats = ebmlens.bundled_stats("cifar10-l2-small")
        test = load_data(cifar_spec, "test")
        y = torch.arange(10)
        for name, kw in PRESETS.items():
            pipe = presets.get(name, stats=stats, data=cifar_spec if name == "dat2025" else None, **kw)
            s = pipe(model, y=y, generator=torch.Generator().manual_seed(0))
            out[f"preset/{name}"] = {"images": _sha(s.images), "mean": float(s.images.double().mean())}
        with tempfile.TemporaryDirectory() as d:
            pipe = presets.get("robust-jem", stats=stats, **PRESETS["robust-jem"])
            ebmlens.sample(model, pipe, n=12, out_dir=d, batch_size=5, seed=3, png=False, grid=False)
            z = np.load(Path(d) / "samples.npz")
            out["runner/robust-jem"] = {k: _sha(z[k]) for k in sorted(z.files)}
        rep = analysis.energy_report(model, test, ("pgd", "pgd-targeted"), n=40, steps=3, n_boot=200,
                                     batch_size=16, geometry=Geometry.for_model(model, "L2", 0.5))
        out["energy_report"] = _report(rep.to_json(per_sample=False))
        out["energy_report/per_sample"] = _sha(np.asarray(json.dumps(_report(rep.to_json())), dtype=object)
                                               .astype(str))
        ood = analysis.ood_report(model, test, ["synthetic:uniform"], n=40, n_boot=200, batch_size=16)
        out["ood"] = _report(ood.to_json(per_sample=False))
        cal = analysis.calibration_report(model, test, bins=5, attack="pgd", steps=3, n=40, batch_size=16)
        out["calibration"] = _report(cal.to_json())
        cf = analysis.counterfactuals(model, test, steps=5, n=4, batch_size=4)
        out["counterfactuals"] = _report(cf.to_json())
        atk = get_attack("pgd", threat_model="L2", eps=0.5, steps=3)
        ra = metrics.robust_accuracy(model, test, atk, indices=list(range(0, 10000, 250)), batch_size=16)
        out["robust_accuracy"] = _clean(ra.to_dict())
        g = torch.Generator().manual_seed(0)
        f1, f2 = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g) + 0.3
        mu1, s1 = metrics.feature_stats(f1)
        mu2, s2 = metrics.feature_stats(f2)
        out["metrics"] = {"fd": float(metrics.frechet_distance(mu1, s1, mu2, s2)),
                          "pr": [float(v) for v in _tuple(metrics.precision_recall(f1, f2))],
                          "dc": [float(v) for v in _tuple(metrics.density_coverage(f1, f2))]}
        return out
    finally:
        torch.set_num_threads(threads)


def _tuple(r):
    import dataclasses

    return [getattr(r, f.name) for f in dataclasses.fields(r)] if dataclasses.is_dataclass(r) else list(r)


def compare(new: dict, old: dict, rel: float = 1e-6, path: str = "") -> list[str]:
    """Every difference between two records, as lines (empty: equal)."""
    diffs: list[str] = []
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k not in new or k not in old:
                diffs.append(f"{path}/{k}: only in {'old' if k in old else 'new'}")
            else:
                diffs += compare(new[k], old[k], rel, f"{path}/{k}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(new, old)):
            diffs += compare(a, b, rel, f"{path}[{i}]")
    elif isinstance(old, float) and isinstance(new, (float, int)):
        if not (old == new or (np.isnan(old) and np.isnan(new)) or abs(new - old) <= rel * max(abs(old), 1e-12)):
            diffs.append(f"{path}: {old!r} -> {new!r}")
    elif old != new:
        diffs.append(f"{path}: {old!r} -> {new!r}")
    return diffs


def main() -> int:
    from ebmlens.data import default_cifar10_path

    spec = f"cifar10:{default_cifar10_path()}"
    rec = compute(spec)
    if "--check" in sys.argv:
        diffs = compare(rec, json.loads(GOLDEN.read_text()))
        print("\n".join(diffs) if diffs else "golden record unchanged")
        return 1 if diffs else 0
    GOLDEN.write_text(json.dumps(rec, indent=1, sort_keys=True, default=float) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

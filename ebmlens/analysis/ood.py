"""Out-of-distribution detection from a classifier's energies (Grathwohl et al. 2020, Sec. 5.2;
Liu et al. 2020, "Energy-based out-of-distribution detection").

Every score is "higher = more in-distribution", computed per image from the logits ``f(x)``:

* ``energy``    - ``-E(x) = T logsumexp_y(f(x)[y] / T)`` with ``T = model.temperature`` (default 1):
  the temperature enters exactly as in :meth:`EnergyModel.energy_from_logits`, so a model loaded
  with another ``T`` is scored with that ``T`` (``T -> 0`` tends to ``max-logit``);
* ``max-logit`` - ``-E(x, y_hat) = max_y f(x)[y]`` (no temperature);
* ``msp``       - the maximum softmax probability ``max_y softmax(f(x))[y]`` (at ``T = 1``);
* ``grad-norm`` - ``-|| d log p(x) / d x ||_2 = -|| d E(x) / d x ||_2`` over the whole image in [0, 1]
  pixels (JEM's third score; one input-gradient pass, which also yields the other scores);
* a callable ``fn(model, x) -> (N,)`` tensor, named by its ``__name__``.

:func:`ood_report` scores an in-distribution set and each OOD set (an ImageData or any data spec,
including the constructed ``synthetic:``, ``interp:`` and ``corrupt:`` sets of
:mod:`~ebmlens.data.constructed`) batch by batch, keeping only per-image scores: results do not
depend on the batch size. Under ``torchrun`` each rank scores every K-th batch and rank 0 assembles
the report (as :func:`~ebmlens.analysis.energy_report` does). Metrics and intervals:
:mod:`ebmlens.analysis._ood_metrics` (AUROC, AUPR-in/out, FPR@95%TPR, in = positive).
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import torch

from .. import _dist
from .._measure import few_samples_warning, map_batches
from ..data import ImageData, ImageSet
from ..data.constructed import resolve_ood
from ..energy import EnergyModel, input_grad
from ._ood_metrics import bootstrap_ood_metrics
from .energies import as_energy_model, as_image_data
from .ood_results import OODReport, OODResult

__all__ = ["ood_report", "score_batch", "SCORES", "OODReport", "OODResult"]

log = logging.getLogger(__name__)

ScoreFn = Callable[[EnergyModel, torch.Tensor], torch.Tensor]
#: the built-in scores read from one pass's logits (higher = in-distribution): name -> (model, logits) -> (N,)
LOGIT_SCORES: dict[str, ScoreFn] = {
    "energy": lambda m, logits: -m.energy_from_logits(logits),  # -E(x) = logsumexp_y f(x)[y]
    "max-logit": lambda m, logits: logits.float().amax(1),
    "msp": lambda m, logits: torch.softmax(logits.float(), 1).amax(1),  # max_y p(y|x)
}
#: every built-in score: the logit scores and ``grad-norm`` (-||dE(x)/dx||, from the input-gradient pass)
SCORES = (*LOGIT_SCORES, "grad-norm")
Score = Union[str, ScoreFn]


def _score_names(scores: Sequence[Score] | Score) -> list[tuple[str, Score]]:
    if isinstance(scores, str) or callable(scores):
        scores = [scores]
    out: list[tuple[str, Score]] = []
    for s in scores:
        if isinstance(s, str):
            if s not in SCORES:
                raise ValueError(f"unknown OOD score {s!r}; choose {', '.join(SCORES)} "
                                 "or pass a callable (model, x) -> (N,)")
            out.append((s, s))
        elif callable(s):
            out.append((getattr(s, "__name__", "custom"), s))
        else:
            raise TypeError(f"an OOD score is a name ({', '.join(SCORES)}) or a callable, got {type(s).__name__}")
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup or not out:
        raise ValueError(f"score {dup[0]!r} is listed twice" if dup else "give at least one score")
    return out


def score_batch(model: EnergyModel, x: torch.Tensor, scores: Sequence[Score] | Score) -> dict[str, torch.Tensor]:
    """Per-image scores ``{name: (N,)}`` of one batch (higher = in-distribution); unchecked input.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> m = EnergyModel(net, input_shape=(3, 2, 2), num_classes=3)
    >>> s = score_batch(m, torch.rand(4, 3, 2, 2), ["energy", "max-logit"])
    >>> bool(torch.all(s["energy"] >= s["max-logit"]))
    True
    """
    named = _score_names(scores)
    gnorm = torch.empty(0)
    if any(s == "grad-norm" for _, s in named):
        _, grad, logits = input_grad(model, x, lambda lg, _: model.energy_from_logits(lg))  # dE(x)/dx
        gnorm = grad.flatten(1).norm(dim=1)
    else:
        with torch.no_grad():
            logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"the model's output has shape {tuple(logits.shape)} for {x.shape[0]} images; "
                         "expected (N, num_classes)")
    out: dict[str, torch.Tensor] = {}
    for name, s in named:
        if isinstance(s, str):
            v = LOGIT_SCORES[s](model, logits) if s in LOGIT_SCORES else -gnorm
        else:
            with torch.no_grad():
                v = torch.as_tensor(s(model, x)).float().flatten()
            if v.shape != (x.shape[0],):
                raise ValueError(f"score {name!r} returned shape {tuple(v.shape)} for {x.shape[0]} images; "
                                 "a score callable must return one value per image, (N,)")
        out[name] = v.detach().float().cpu()
    return out


def _subset(data: ImageSet, n: int | None) -> np.ndarray:
    if n is None or n >= len(data):
        return np.arange(len(data))
    return data.strided(int(n))


def ood_report(
    model: EnergyModel | str,
    in_data: ImageData | str,
    ood: Mapping[str, ImageData | str] | Sequence[str],
    scores: Sequence[Score] | Score = ("energy", "msp", "grad-norm", "max-logit"),
    *,
    n: int | None = 1000,
    batch_size: int = 100,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> OODReport:
    """How well each score separates ``in_data`` (positive) from each OOD set.

    Args:
        model: an :class:`~ebmlens.EnergyModel` or a spec such as ``"ebmlens:cifar10-l2-small"``.
        in_data: the in-distribution images: an ImageData or a data spec (test split by default).
        ood: ``{name: ImageData or spec}``, or a list of specs (each its own name); specs include
            ``synthetic:uniform``, ``interp:SPEC``, ``corrupt:contrast@3:SPEC`` (see
            :mod:`~ebmlens.data.constructed`) and every :func:`ebmlens.load_data` spec.
        scores: names from :data:`SCORES` and/or callables ``(model, x) -> (N,)`` (higher = in).
        n: images per set, spread evenly over it (``None``: all); ``synthetic:`` sets get as many
            as the in-set contributes.
        batch_size: images per forward pass (memory only: the scores do not depend on it).
        n_boot, level, seed: percentile-bootstrap intervals (in and out resampled independently,
            ``n_boot`` resamples from ``numpy.random.default_rng(seed)``; the seed is recorded).
        device: where to run (default: the model's device).
        progress: ``True`` for a tqdm bar on stderr, or a callback ``(done, total)``.

    Returns:
        An :class:`OODReport`: ``.table()``, ``.to_json(path)``, ``.plot(path)``, ``[set, score]``.
    """
    model = as_energy_model(model, device)
    data = as_image_data(in_data)
    named = _score_names(scores)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(ood, Mapping):
        if isinstance(ood, (str, ImageData)):
            ood = [ood]
        ood = {(o if isinstance(o, str) else o.source): o for o in ood}
    if not ood:
        raise ValueError("give at least one OOD set, e.g. {'noise': 'synthetic:uniform'}")
    if "in" in ood:
        raise ValueError("'in' names the in-distribution set; give the OOD set another name")
    in_idx = _subset(data, n)
    sets: dict[str, tuple[ImageSet, np.ndarray]] = {"in": (data, in_idx)}
    for name, spec in ood.items():
        od = resolve_ood(spec, data, model, n=int(in_idx.size))
        sets[str(name)] = (od, _subset(od, n))

    dev = next(model.parameters()).device if device is None else torch.device(device)
    d = _dist.init_if_needed(dev)
    score_fns = [s for _, s in named]
    total = sum(int(idx.size) for _, idx in sets.values())
    offset = 0
    merged: dict[str, dict | None] = {}
    with model.mode("eval"):
        for name, (ds, idx) in sets.items():  # each set's batches shared among the ranks
            def tick(done: int, _total: int, base: int = offset) -> None:
                progress(base + done, total)  # type: ignore[operator]

            merged[name] = map_batches(model, ds, lambda x, y, i: score_batch(model, x, score_fns), indices=idx,
                                       batch_size=batch_size, progress=tick if callable(progress) else progress,
                                       device=dev, labels=False, desc=f"ood scores: {name}",
                                       name=f"images of {name!r}")
            offset += int(idx.size)
    info = {name: {"source": ds.source, "fingerprint": ds.fingerprint, "n": int(idx.size), "size": len(ds)}
            for name, (ds, idx) in sets.items()}
    config = {"scores": [nm for nm, _ in named], "n": n, "batch_size": batch_size, "n_boot": n_boot, "level": level,
              "seed": seed, "temperature": model.temperature, "device": str(dev)}
    if d.world > 1:
        config["world_size"] = d.world
    return _dist.run_on_rank0(_assemble, merged, [nm for nm, _ in named], info, model.describe(), config)


def _assemble(merged: dict, score_names: list[str], info: dict, model_info: dict, config: dict) -> OODReport:
    values = {name: {s: np.asarray(merged[name][s]) for s in score_names} for name in info}
    results = []
    for name in info:
        if name == "in":
            continue
        for s in score_names:
            m = bootstrap_ood_metrics(values["in"][s], values[name][s], n_boot=config["n_boot"],
                                      level=config["level"], seed=config["seed"])
            results.append(OODResult(name, s, m["auroc"], m["aupr_in"], m["aupr_out"], m["fpr95"]))
    warn = few_samples_warning({name: v["n"] for name, v in info.items()}, "AUROC")
    return OODReport(tuple(results), values, model_info, info, config, tuple(warn))

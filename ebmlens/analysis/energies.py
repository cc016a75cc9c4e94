"""Natural vs adversarial energies of a classifier (Mirza et al. 2024, Sec. 3).

A classifier ``f`` is an energy-based model (Grathwohl et al. 2020): ``E(x, y) = -f(x)[y]`` and
``E(x) = -logsumexp_y f(x)[y]``. :func:`energy_report` measures, on the same images, these energies
for the natural inputs ``x`` and for adversarial versions ``x*`` made by any registered attack
(:func:`ebmlens.attacks.get_attack`), with accuracy and the paired gaps ``E(x) - E(x*)``.

It streams: images are attacked batch by batch and only per-image energies (a few floats each) are
kept, so memory does not grow with ``n`` unless ``keep_adversarial=True``. Randomness (random targets,
random starts) comes from per-image streams seeded by ``(seed, image index)``, so results do not
depend on the batch size.

Under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE > 1``) each rank attacks every K-th batch; the
per-image energies are gathered to rank 0 in index order, rank 0 computes the statistics, and every
rank returns the same report (``config["world_size"] = K``), equal to a single process's.

Example (PATH: the CIFAR-10 archive or folder)::

    import ebmlens
    rep = ebmlens.analysis.energy_report("ebmlens:cifar10-l2-small", "cifar10:PATH", ["pgd", "pgd-targeted"],
                                         threat_model="L2", eps=0.5, n=1000)
    print(rep.table())
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import _dist, rng
from ..attacks import Attack, TargetChoice, choose_targets, get_attack
from ..data import ImageSet, load_data, require_labels
from ..energy import EnergyModel, validate_images
from ..models import resolve_model
from .report import EnergyReport, summarize_kind

__all__ = ["energy_report", "as_energy_model", "as_image_data", "build_attacks"]

log = logging.getLogger(__name__)


def as_energy_model(model: EnergyModel | str, device: str | torch.device | None = None, **load_kwargs) -> EnergyModel:
    """An :class:`EnergyModel`, or a ``source:name`` spec (:func:`ebmlens.models.resolve_model`)."""
    return resolve_model(model, device=device, **load_kwargs)


def as_image_data(data: ImageSet | str, preprocess=None) -> ImageSet:
    """An image set (:class:`~ebmlens.data.ImageSet`, in memory or streamed), or a data spec loaded
    with :func:`ebmlens.load_data` (test split by default; ``preprocess``: the model's resize / crop)."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, str):
        return load_data(data, default_split="test", preprocess=preprocess)
    raise TypeError(f"data must be an ebmlens ImageData or a data spec like 'cifar10:PATH', got {type(data).__name__}")


def build_attacks(attacks: Sequence[str | Attack] | str, *, threat_model: str, eps: float, steps: int | None = None,
                  attack_options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Attack]:
    """Names (or ready :class:`Attack` objects) -> attacks, with ``steps`` applied where the attack has steps."""
    if isinstance(attacks, (str, Attack)):
        attacks = [attacks]
    out: list[Attack] = []
    for a in attacks:
        if isinstance(a, Attack):
            out.append(a)
            continue
        opts = dict((attack_options or {}).get(a, {}))
        probe = get_attack(a, threat_model=threat_model, eps=eps)
        if steps is not None and "steps" in probe.options:
            opts.setdefault("steps", int(steps))
        out.append(get_attack(a, threat_model=threat_model, eps=eps, **opts) if opts else probe)
    names = [a.name for a in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"attack {dup[0]!r} is listed twice (aliases resolve to the same attack); list it once")
    return out


def _check_logits(logits: torch.Tensor, model: EnergyModel, n: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or tuple(logits.shape) != (n, model.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model's output has shape {shape} for {n} images, expected (N, num_classes) = "
                         f"({n}, {model.num_classes}); the classifier must return one logit per class")


@torch.no_grad()
def _energies(model: EnergyModel, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    logits = model(x)  # unchecked: energy_report validated the data
    _check_logits(logits, model, x.shape[0])
    e = model.energy_from_logits(logits)
    ej = model.joint_energy_from_logits(logits, y)
    return logits, e, ej, logits.argmax(1)


def energy_report(
    model: EnergyModel | str,
    data: ImageSet | str,
    attacks: Sequence[str | Attack] | str = ("pgd", "pgd-targeted"),
    *,
    eps: float,
    threat_model: str = "Linf",
    n: int | None = 1000,
    indices: Sequence[int] | None = None,
    batch_size: int = 100,
    steps: int | None = None,
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    target: TargetChoice = "random",
    targets: torch.Tensor | Sequence[int] | None = None,
    seed: int = 0,
    keep_adversarial: bool = False,
    level: float = 0.95,
    n_boot: int = 2000,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> EnergyReport:
    """Energies of natural and adversarial inputs, per attack, with accuracy and paired gaps.

    For every image ``x`` with label ``y`` and every attack ``a`` (``x* = a(x)``) records ``E(x)``,
    ``E(x, y)``, ``E(x, y_adv)`` and the prediction, on natural and adversarial inputs. ``y_adv`` is
    the target for targeted attacks that take one, else the label predicted on the input (so for
    untargeted attacks ``E(x*, y_adv)`` is the energy of the class the attack reached).

    Args:
        model: an :class:`~ebmlens.EnergyModel` or a spec such as ``"ebmlens:cifar10-l2-small"``.
        data: an image set (in memory or streamed) or a data spec (test split by default; read with the model's preprocess).
        attacks: registry names (``"pgd"``, ``"pgd-targeted"``, ``"apgd-ce"``, ...; see
            :func:`ebmlens.attacks.list_attacks`) or :class:`~ebmlens.attacks.Attack` objects.
        eps: attack radius in [0, 1] pixel units (> 0), e.g. ``0.5`` (L2) or ``8/255`` (Linf).
        threat_model: ``"L2"`` or ``"Linf"``.
        n: number of images, spread evenly over the dataset (``None``: all of them).
        indices: explicit image indices instead of ``n``.
        batch_size: images per batch (memory, not results, depends on it).
        steps: gradient steps for every attack that has a ``steps`` option (default: each attack's).
        attack_options: per attack name, options for :func:`~ebmlens.attacks.get_attack`.
        target: how targeted attacks choose targets: ``"random"`` (uniform over the other classes),
            ``"least-likely"`` (lowest natural logit) or ``"given"`` (``targets``).
        targets: ``(n,)`` target labels for ``target="given"``.
        seed: seed of the per-image random streams (targets, random starts, torchattacks' seed).
        keep_adversarial: also return the adversarial images (``n`` images per attack in memory).
        level, n_boot: bootstrap interval of the gaps.
        device: where to run (default: the model's device).
        progress: ``True`` for a tqdm bar on stderr, or a callback ``(done, total)``.

    Returns:
        An :class:`~ebmlens.analysis.EnergyReport`.
    """
    model = as_energy_model(model, device)
    data = as_image_data(data, getattr(model, "preprocess", None))
    data = require_labels(data, "energy_report", model)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be > 0 (in [0, 1] pixel units, e.g. 0.5 or 8/255), got {eps!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if target not in ("random", "least-likely", "given"):
        raise ValueError(f"unknown target choice {target!r}; choose 'random', 'least-likely' or 'given'")
    atks = build_attacks(attacks, threat_model=threat_model, eps=float(eps), steps=steps, attack_options=attack_options)
    if "natural" in [a.name for a in atks]:  # pragma: no cover - no attack is named so
        raise ValueError("'natural' is reserved for the natural inputs")

    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64).ravel()
        if idx.size == 0 or idx.min() < 0 or idx.max() >= len(data):
            raise ValueError(f"indices must be non-empty and in [0, {len(data) - 1}] for {data.source}")
    elif n is None:
        idx = np.arange(len(data))
    else:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if n > len(data):
            raise ValueError(f"n={n} is larger than the dataset ({len(data)} images in {data.source}); "
                             f"use n <= {len(data)} or n=None for all of them")
        idx = data.strided(int(n))
    if data.num_classes > model.num_classes:
        raise ValueError(f"the data has {data.num_classes} classes but the model predicts {model.num_classes}")
    given = None
    if target == "given":
        if targets is None:
            raise ValueError("target='given' needs targets=<one class index per image>")
        given = torch.as_tensor(np.asarray(targets), dtype=torch.long).ravel()
        if given.numel() != idx.size:
            raise ValueError(f"targets has {given.numel()} labels for {idx.size} images")
    elif targets is not None:
        raise ValueError("targets= is only used with target='given'")

    dev = next(model.parameters()).device if device is None else torch.device(device)
    d = _dist.init_if_needed(dev)  # under torchrun: this rank takes every world-th batch
    kinds = ["natural"] + [a.name for a in atks]
    starts = _dist.shard(list(range(0, idx.size, batch_size)), d)
    parts: list[tuple[int, dict[str, dict[str, np.ndarray]], dict[str, torch.Tensor]]] = []
    bar = None
    if progress is True and d.rank == 0:
        from tqdm import tqdm

        share = sum(min(batch_size, idx.size - s) for s in starts)
        bar = tqdm(total=share, unit="img", dynamic_ncols=True,
                   desc="energy report" if not d.active else f"energy report (rank 0 of {d.world})")

    done = 0
    mine = np.concatenate([idx[s:s + batch_size] for s in starts]) if starts else idx[:0]
    with model.mode("eval"):
        for start, (x, y) in zip(starts, data.batches(batch_size, mine, dev)):  # streamed sets: decoded by workers
            acc: dict[str, dict[str, np.ndarray]] = {}
            kept: dict[str, torch.Tensor] = {}

            def put(kind: str, **arrays: torch.Tensor) -> None:
                acc[kind] = {key: v.detach().cpu().numpy() for key, v in arrays.items()}

            bidx = idx[start:start + batch_size]
            if start == starts[0]:
                validate_images(x, model, name="data images")
            logits, e, ej, pred = _energies(model, x, y)
            put("natural", energy=e, joint_true=ej, joint_adv=model.joint_energy_from_logits(logits, pred), pred=pred)
            tgt = None
            if any(a.needs_target for a in atks):
                streams = rng.SampleStreams(rng.sample_seed(seed, 0), bidx.tolist())
                g = given[start:start + batch_size].to(dev) if given is not None else None
                tgt = choose_targets(logits, y, target, streams, given=g)
            for j, a in enumerate(atks):
                streams = rng.SampleStreams(rng.sample_seed(seed, j + 1), bidx.tolist())
                xa = a(model, x, y, target=tgt if a.needs_target else None, generator=streams)
                la, ea, eja, pa = _energies(model, xa, y)
                y_adv = tgt if a.needs_target else pa
                arrays = dict(energy=ea, joint_true=eja, joint_adv=model.joint_energy_from_logits(la, y_adv), pred=pa)
                if a.needs_target:
                    arrays["target"] = tgt
                put(a.name, **arrays)
                if keep_adversarial:
                    kept[a.name] = xa.detach().cpu()
                del xa, la
            parts.append((int(start), acc, kept))
            done += bidx.size
            if bar is not None:
                bar.update(bidx.size)
            elif callable(progress) and d.rank == 0:
                progress(done * d.world if d.active else done, int(idx.size))
    if bar is not None:
        bar.close()
    gathered = _dist.gather_to_rank0(parts)  # rank 0: every rank's batches; None elsewhere
    return _dist.run_on_rank0(_assemble, gathered, kinds, atks, data, idx, model, keep_adversarial, level, n_boot,
                              seed, threat_model, eps, target, steps, batch_size, dev, d.world)


def _assemble(gathered: list, kinds: list[str], atks: list[Attack], data: ImageSet, idx: np.ndarray,
              model: EnergyModel, keep_adversarial: bool, level: float, n_boot: int, seed: int, threat_model: str,
              eps: float, target: str, steps: int | None, batch_size: int, dev: torch.device,
              world: int) -> EnergyReport:
    """Rank 0 (or the single process): per-batch results in index order -> the report."""
    parts = sorted((p for rank_parts in gathered for p in rank_parts), key=lambda p: p[0])
    values = {k: {key: np.concatenate([p[1][k][key] for p in parts]) for key in parts[0][1][k]} for k in kinds}
    labels = data.labels[idx].astype(np.int64)
    summaries = [summarize_kind("natural", None, values["natural"], labels, None, level=level, n_boot=n_boot, seed=seed)]
    for a in atks:
        summaries.append(summarize_kind(a.name, a.targeted, values[a.name], labels, values["natural"],
                                        level=level, n_boot=n_boot, seed=seed))
    config = {"threat_model": atks[0].threat_model if atks else threat_model, "eps": float(eps),
              "attacks": [a.describe() for a in atks], "target": target, "seed": seed, "steps": steps,
              "batch_size": batch_size, "level": level, "n_boot": n_boot, "device": str(dev)}
    if world > 1:
        config["world_size"] = world
    data_info = {"source": data.source, "fingerprint": data.fingerprint, "n": int(idx.size), "size": len(data)}
    adversarial = {a.name: torch.cat([p[2][a.name] for p in parts]) for a in atks} if keep_adversarial else None
    return EnergyReport(tuple(summaries), values, labels, idx.copy(), model.describe(), data_info, config, adversarial)

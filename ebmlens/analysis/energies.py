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
    from ebmlens.attacks import L2Ball
    rep = ebmlens.analysis.energy_report("ebmlens:cifar10-l2-small", "cifar10:PATH", ["pgd", "pgd-targeted"],
                                         geometry=L2Ball(0.5), n=1000)
    print(rep.table())
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import _dist, rng
from .._measure import check_labels, few_samples_warning, map_batches
from ..attacks import Attack, Geometry, L2Ball, LinfBall, TargetChoice, choose_targets, get_attack
from ..data import ImageSet, load_data, require_labels
from ..energy import EnergyModel
from ..models import resolve_model
from .report import EnergyReport, summarize_kind

__all__ = ["energy_report", "as_energy_model", "as_image_data", "build_attacks", "resolve_geometry"]

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


def labeled_image_data(data: ImageSet | str, who: str, model: Any, preprocess=None) -> ImageSet:
    """:func:`as_image_data`, then :func:`~ebmlens.data.require_labels` for ``who`` (unlabeled sets
    refused, class folders mapped to the model's classes)."""
    labeled = require_labels(as_image_data(data, preprocess), who, model)
    if not isinstance(labeled, ImageSet):  # pragma: no cover - require_labels returns an ImageSet
        raise TypeError(f"{who}: require_labels gave {type(labeled).__name__}, not an ImageSet")
    return labeled


def build_attacks(attacks: Sequence[str | Attack] | str, *, geometry: L2Ball | LinfBall | None = None,
                  threat_model: str | None = None, eps: float | None = None, steps: int | None = None,
                  attack_options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Attack]:
    """Names (or ready :class:`Attack` objects) -> attacks in ``geometry`` (or the ``threat_model`` / ``eps``
    pair), with ``steps`` applied where the attack has steps."""
    if geometry is not None:
        threat_model, eps = geometry.threat_model, float(geometry.eps)
    if threat_model is None or eps is None:
        raise ValueError("build_attacks needs geometry= (e.g. L2Ball(0.5)) or threat_model= and eps=")
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


def resolve_geometry(model: EnergyModel, geometry: L2Ball | LinfBall | None, threat_model: str | None,
                     eps: float | None, caller: str) -> L2Ball | LinfBall:
    """``geometry``, else :meth:`Geometry.for_model` of the deprecated ``threat_model=`` / ``eps=`` keywords
    (a ``DeprecationWarning`` for one release), else the model's own geometry."""
    if geometry is not None:
        if threat_model is not None or eps is not None:
            raise ValueError(f"{caller}: give geometry= or the deprecated threat_model=/eps=, not both")
        if not isinstance(geometry, (L2Ball, LinfBall)):
            raise TypeError(f"{caller}: geometry must be an L2Ball or LinfBall (e.g. Geometry.for_model(model)), "
                            f"got {type(geometry).__name__}")
        return geometry
    if threat_model is not None or eps is not None:
        warnings.warn(f"{caller}(threat_model=, eps=) is deprecated and goes in the next release; pass "
                      "geometry=Geometry.for_model(model, threat_model, eps) (ebmlens.attacks.Geometry)",
                      DeprecationWarning, stacklevel=3)
    return Geometry.for_model(model, threat_model, eps)


def energy_report(
    model: EnergyModel | str,
    data: ImageSet | str,
    attacks: Sequence[str | Attack] | str = ("pgd", "pgd-targeted"),
    *,
    geometry: L2Ball | LinfBall | None = None,
    eps: float | None = None,
    threat_model: str | None = None,
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
        data: an image set (in memory or streamed) or a data spec (test split by default; read with the
            model's preprocess).
        attacks: registry names (``"pgd"``, ``"pgd-targeted"``, ``"apgd-ce"``, ...; see
            :func:`ebmlens.attacks.list_attacks`) or :class:`~ebmlens.attacks.Attack` objects.
        geometry: the attacks' threat model and radius, e.g. ``L2Ball(0.5)`` or ``LinfBall(8/255)``
            (default: :meth:`Geometry.for_model` of the model: its own threat model and eps, as the CLI).
        eps, threat_model: deprecated (one release): ``geometry=Geometry.for_model(model, threat_model, eps)``.
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
        An :class:`~ebmlens.analysis.EnergyReport` (``warnings``: groups of fewer than 20 images).
    """
    model = as_energy_model(model, device)
    data = labeled_image_data(data, "energy_report", model, getattr(model, "preprocess", None))
    geom = resolve_geometry(model, geometry, threat_model, eps, "energy_report")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if target not in ("random", "least-likely", "given"):
        raise ValueError(f"unknown target choice {target!r}; choose 'random', 'least-likely' or 'given'")
    atks = build_attacks(attacks, geometry=geom, steps=steps, attack_options=attack_options)
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
        check_labels(given, model, "targets")
    elif targets is not None:
        raise ValueError("targets= is only used with target='given'")

    dev = next(model.parameters()).device if device is None else torch.device(device)
    kinds = ["natural"] + [a.name for a in atks]
    where: dict[int, int] = {}  # dataset index -> position in idx, for the given targets
    for j, i in enumerate(idx.tolist() if given is not None else []):
        if i in where and int(given[where[i]]) != int(given[j]):  # type: ignore[index]
            raise ValueError(f"image {i} is listed twice with different targets; list each image once")
        where.setdefault(i, j)

    def measure(x: torch.Tensor, y: torch.Tensor, bidx: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def put(kind: str, **arrays: torch.Tensor) -> None:
            out.update({f"{kind}\t{key}": v.detach().cpu().numpy() for key, v in arrays.items()})

        logits, e, ej, pred = _energies(model, x, y)
        put("natural", energy=e, joint_true=ej, joint_adv=model.joint_energy_from_logits(logits, pred), pred=pred)
        tgt = None
        if any(a.needs_target for a in atks):
            streams = rng.SampleStreams(rng.sample_seed(seed, 0), bidx.tolist())
            g = given[[where[int(i)] for i in bidx]].to(dev) if given is not None else None
            tgt = choose_targets(logits, y, target, streams, given=g)
        for j, a in enumerate(atks):
            streams = rng.SampleStreams(rng.sample_seed(seed, j + 1), bidx.tolist())
            xa = a(model, x, y, target=tgt if a.needs_target else None, generator=streams)
            la, ea, eja, pa = _energies(model, xa, y)
            y_adv = tgt if (a.needs_target and tgt is not None) else pa
            arrays = dict(energy=ea, joint_true=eja, joint_adv=model.joint_energy_from_logits(la, y_adv), pred=pa)
            if a.needs_target and tgt is not None:
                arrays["target"] = tgt
            put(a.name, **arrays)
            if keep_adversarial:
                out[f"adv\t{a.name}"] = xa.detach().cpu()
        return out

    d = _dist.init_if_needed(dev)  # under torchrun: this rank takes every world-th batch
    with model.mode("eval"):
        merged = map_batches(model, data, measure, indices=idx, batch_size=batch_size, progress=progress,
                             device=dev, desc="energy report")
    return _dist.run_on_rank0(_assemble, merged, kinds, atks, data, idx, model, keep_adversarial, level, n_boot,
                              seed, geom, target, steps, batch_size, dev, d.world)


def _assemble(merged: dict[str, Any], kinds: list[str], atks: list[Attack], data: ImageSet, idx: np.ndarray,
              model: EnergyModel, keep_adversarial: bool, level: float, n_boot: int, seed: int,
              geom: L2Ball | LinfBall, target: str, steps: int | None, batch_size: int, dev: torch.device,
              world: int) -> EnergyReport:
    """Rank 0 (or the single process): per-image results in index order -> the report."""
    values: dict[str, dict[str, np.ndarray]] = {k: {} for k in kinds}
    for key, v in merged.items():
        kind, _, name = key.partition("\t")
        if kind in values:
            values[kind][name] = v
    labels = data.labels[idx].astype(np.int64)
    summaries = [summarize_kind("natural", None, values["natural"], labels, None, level=level, n_boot=n_boot,
                                seed=seed)]
    for a in atks:
        summaries.append(summarize_kind(a.name, a.targeted, values[a.name], labels, values["natural"],
                                        level=level, n_boot=n_boot, seed=seed))
    config = {"threat_model": atks[0].threat_model if atks else geom.threat_model, "eps": float(geom.eps),
              "attacks": [a.describe() for a in atks], "target": target, "seed": seed, "steps": steps,
              "batch_size": batch_size, "level": level, "n_boot": n_boot, "device": str(dev)}
    if world > 1:
        config["world_size"] = world
    data_info = {"source": data.source, "fingerprint": data.fingerprint, "n": int(idx.size), "size": len(data)}
    adversarial = {a.name: merged[f"adv\t{a.name}"] for a in atks} if keep_adversarial else None
    warn = few_samples_warning({"images": int(idx.size)}, "energy report")
    return EnergyReport(tuple(summaries), values, labels, idx.copy(), model.describe(), data_info, config, adversarial,
                        tuple(warn))

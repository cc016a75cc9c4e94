"""A classifier seen as an energy-based model (Grathwohl et al., JEM, 2020).

For a classifier ``f`` with logits ``f(x) in R^K``:

* joint energy      ``E(x, y) = -f(x)[y]``
* marginal energy   ``E(x) = -T * logsumexp_y(f(x)[y] / T)``  (temperature ``T``, default 1)
* class posterior   ``log p(y | x) = log_softmax(f(x))[y]``;  ``E(x) - E(x, y) = -log p(y|x) >= 0`` at T=1.

:class:`EnergyModel` owns normalization, so every caller passes pixels in ``[0, 1]``
(NCHW float). Gradients are taken with respect to the input only
(:func:`torch.autograd.grad`), never accumulated into parameters.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
>>> m = EnergyModel(net, mean=(0.5,), std=(0.5,), input_shape=(3, 2, 2), num_classes=3)
>>> x = torch.rand(4, 3, 2, 2)
>>> bool(torch.all(m.energy(x) <= m.joint_energy(x, torch.zeros(4, dtype=torch.long)) + 1e-6))
True
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import nn

from ._validate import validate_images, validate_inputs, validate_labels

__all__ = ["EnergyModel", "Preprocess", "input_grad", "energy_grad", "validate_images", "validate_labels",
           "validate_inputs"]

log = logging.getLogger(__name__)

EnergyKind = Literal["joint", "marginal", "ce"]


@dataclass(frozen=True)
class Preprocess:
    """How image files become the model's input before normalization: resize the shorter side to
    ``resize`` pixels, then center-crop ``crop x crop`` (either may be ``None``).

    RobustBench's ImageNet transform is ``Preprocess(256, 224)`` (``Resize(256)``, ``CenterCrop(224)``);
    timm models take theirs from the data config (``crop_pct``). CIFAR models have none (``None``).
    Applied by :mod:`ebmlens.data` to decoded PIL images (in the data loader's worker processes when
    the set is streamed). ``interpolation``: a PIL filter name (``"bilinear"``, ``"bicubic"``).
    """

    resize: int | None = None
    crop: int | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v > 0):
                raise ValueError(f"Preprocess.{name} must be a positive int or None, got {v!r}")
        if self.interpolation not in ("nearest", "bilinear", "bicubic", "lanczos"):
            raise ValueError(f"Preprocess.interpolation must be nearest/bilinear/bicubic/lanczos, "
                             f"got {self.interpolation!r}")

    def __call__(self, im):
        """A PIL image, resized (shorter side, antialiased) and center-cropped."""
        from PIL import Image

        if self.resize is not None:
            w, h = im.size
            s = self.resize / min(w, h)
            size = (self.resize, max(1, round(h * s))) if w <= h else (max(1, round(w * s)), self.resize)
            if size != (w, h):
                im = im.resize(size, getattr(Image.Resampling, self.interpolation.upper()))
        if self.crop is not None:
            w, h = im.size
            if w < self.crop or h < self.crop:
                raise ValueError(f"cannot center-crop {self.crop} from a {w}x{h} image; "
                                 f"set Preprocess.resize >= {self.crop}")
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
        return im

    def describe(self) -> dict:
        return asdict(self)


class EnergyModel(nn.Module):
    """Wrap a classifier as an energy-based model.

    Args:
        classifier: any ``nn.Module`` mapping normalized ``(N, C, H, W)`` images to ``(N, K)`` logits.
        mean, std: per-channel normalization applied inside (``(x - mean) / std``). Use
            ``(0,)``/``(1,)`` (the default) for models that normalize themselves, as RobustBench's do.
        input_shape: ``(C, H, W)`` the classifier expects.
        num_classes: ``K``.
        class_names: optional names of the ``K`` classes.
        temperature: ``T`` of the marginal energy.
        sampling_mode: ``"eval"`` (default) or ``"train"``: the BatchNorm/Dropout mode used while
            sampling or attacking. JEM++ samples with BatchNorm in train mode; that mode couples
            the images of a batch. See :meth:`mode`.
        source, name, dataset, threat_model: provenance, recorded in outputs.
        eps: the radius the model was trained (or is benchmarked) for, in [0, 1] pixels, when known:
            the default eps of attacks run on it (``ebmlens energy`` / ``accuracy``).
        allow_other_size: accept images whose ``(H, W)`` differ from ``input_shape`` at the checked
            entry points (the classifier must handle them: nothing is resized here).
        check_range: refuse images outside roughly [0, 1] at the checked entry points (see
            :func:`validate_images`); ``False`` turns that check off.
        preprocess: a :class:`Preprocess` (resize, center crop) that image files get before they
            reach the model (ImageNet models); ``None`` (CIFAR): files are used at their size.

    The first forward checks the classifier's output width against ``num_classes`` (a one-line error
    naming both); no forward runs at wrap time.

    Checked and unchecked calls: :meth:`logits`, :meth:`energy`, :meth:`joint_energy` and
    :meth:`log_prob_y` validate their input (:func:`validate_inputs`: shape, dtype, labels, NaN/inf,
    pixel range; one device sync). ``model(x)`` (``forward``), :meth:`energy_from_logits` and
    :meth:`joint_energy_from_logits` do not: the library's own loops use those, so sampling may
    leave [0, 1] between steps.
    """

    mean: torch.Tensor  # (1, C, 1, 1) buffers, registered in __init__
    std: torch.Tensor

    def __init__(
        self,
        classifier: nn.Module,
        *,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int,
        class_names: Sequence[str] | None = None,
        temperature: float = 1.0,
        sampling_mode: Literal["eval", "train"] = "eval",
        source: str | None = None,
        name: str | None = None,
        dataset: str | None = None,
        threat_model: str | None = None,
        allow_other_size: bool = False,
        check_range: bool = True,
        eps: float | None = None,
        preprocess: Preprocess | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise TypeError(
                f"EnergyModel expects an nn.Module classifier, got {type(classifier).__name__}; "
                "wrap a plain function in an nn.Module first"
            )
        if len(input_shape) != 3 or any(int(s) <= 0 for s in input_shape):
            raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        c = int(input_shape[0])
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        for label, t in (("mean", mean_t), ("std", std_t)):
            if t.numel() not in (1, c):
                raise ValueError(f"{label} must have 1 or {c} values (one per channel), got {t.numel()}")
        if torch.any(std_t <= 0):
            raise ValueError(f"std must be > 0, got {std_t.tolist()}")
        if class_names is not None and len(class_names) != int(num_classes):
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if preprocess is not None and not isinstance(preprocess, Preprocess):
            raise TypeError(f"preprocess must be an ebmlens.energy.Preprocess or None, got {type(preprocess).__name__}")
        if sampling_mode not in ("eval", "train"):
            raise ValueError(f"sampling_mode must be 'eval' or 'train', got {sampling_mode!r}")
        self.classifier = classifier
        self.register_buffer("mean", mean_t.expand(c).clone().view(1, c, 1, 1))
        self.register_buffer("std", std_t.expand(c).clone().view(1, c, 1, 1))
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        self.temperature = float(temperature)
        self.sampling_mode = sampling_mode
        self.source = source
        self.name = name
        self.dataset = dataset
        self.threat_model = threat_model
        self.eps = None if eps is None else float(eps)
        self.allow_other_size = bool(allow_other_size)
        self.check_range = bool(check_range)
        self.preprocess = preprocess
        self.compute_chunk: int | None = None  # rows per classifier call in eval mode (None: the whole batch)
        self._width_ok = False  # set by the first forward that returns (N, num_classes) logits
        self.eval()

    # ------------------------------------------------------------------ energies
    def _check(self, x: object, y: object = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return validate_inputs(self, x, y, check_range=self.check_range, allow_other_size=self.allow_other_size)

    _width_ok = False  # the class default, for objects pickled before the width check existed

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - nn.Module protocol
        """Unchecked logits ``f(x)`` (the hot path the library's loops use); in chunks of
        :attr:`compute_chunk` rows when set (:meth:`chunked`). The first call checks that the classifier
        returns ``num_classes`` logits per image (never an extra forward at wrap time)."""
        z = (x - self.mean) / self.std
        m = getattr(self, "compute_chunk", None)
        if m is None or self.classifier.training or z.shape[0] == m:
            out = self.classifier(z)
        else:
            out = _in_chunks(self.classifier, z, m)
        if not self._width_ok:
            self._check_width(out)
        return out

    def _check_width(self, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            if out.shape[1] != self.num_classes:
                raise ValueError(f"the classifier returns {out.shape[1]} logits per image but the EnergyModel says "
                                 f"num_classes={self.num_classes}; build it with num_classes={out.shape[1]}, or wrap "
                                 f"a classifier with {self.num_classes} outputs")
            self._width_ok = True

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)``: ``(N, K)`` logits of pixels ``x`` in [0, 1], validated (:func:`validate_inputs`)."""
        return self.forward(self._check(x)[0])

    def energy_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``E(x) = -T logsumexp(f/T)``, computed in float32 for stability."""
        t = self.temperature
        return -t * torch.logsumexp(logits.float() / t, dim=1)

    @staticmethod
    def joint_energy_from_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``E(x, y) = -f(x)[y]`` in float32."""
        return -logits.float().gather(1, y.view(-1, 1).long()).squeeze(1)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Marginal energy ``E(x)``, shape ``(N,)``; input validated."""
        return self.energy_from_logits(self.forward(self._check(x)[0]))

    def joint_energy(self, x: torch.Tensor, y: torch.Tensor | int) -> torch.Tensor:
        """Joint energy ``E(x, y) = -f(x)[y]``, shape ``(N,)``; ``y``: one class index per image (a
        tensor, list or array of shape ``(N,)`` / ``(N, 1)``) or an int for all; validated."""
        if y is None:
            raise TypeError("joint_energy(x, y) needs y: one class index per image, or an int for all; "
                            "for E(x) without labels use energy(x)")
        xv, yv = self._check(x, y)
        assert yv is not None  # validate_inputs returns labels whenever it is given some
        return self.joint_energy_from_logits(self.forward(xv), yv)

    def log_prob_y(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(y | x)`` for every class, shape ``(N, K)``; input validated."""
        return torch.log_softmax(self.forward(self._check(x)[0]).float(), dim=1)

    # ------------------------------------------------------------------ modes
    @contextlib.contextmanager
    def mode(self, mode: Literal["eval", "train"] | None = None) -> Iterator["EnergyModel"]:
        """Put the classifier in ``mode`` (default: ``self.sampling_mode``) and restore afterwards.

        In train mode BatchNorm running statistics are saved and restored, so sampling never
        changes the model.
        """
        mode = mode or self.sampling_mode
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
        was_training = self.classifier.training
        saved = None
        if mode == "train":
            saved = {k: v.detach().clone() for k, v in self.classifier.state_dict().items()
                     if "running_" in k or "num_batches_tracked" in k}
        self.classifier.train(mode == "train")
        try:
            yield self
        finally:
            self.classifier.train(was_training)
            if saved:
                # Put the saved tensors back as new objects rather than copying in place, so an
                # autograd graph built before this block (which saved the old buffers) stays valid.
                for key, value in saved.items():
                    owner_name, _, attr = key.rpartition(".")
                    owner = self.classifier.get_submodule(owner_name) if owner_name else self.classifier
                    setattr(owner, attr, value)

    @contextlib.contextmanager
    def chunked(self, m: int | None) -> Iterator["EnergyModel"]:
        """Run the classifier in compute chunks of exactly ``m`` rows inside the block (``None``: whole
        batches; restored afterwards). Float32 kernels block their work by the rows they get, so a row's
        logits moved by ~1e-7 with the batch size (CPU: 1-3-row batches against larger ones), which sign
        steps turn into whole steps; a call on exactly ``m`` rows gave every row the same bits whatever its
        position and neighbours (m = 4 to 32, 1 and 2 threads; docs/sampling.md). Eval mode only: in
        train mode BatchNorm couples the batch and chunks would change its statistics."""
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"compute chunk must be a positive int (rows per classifier call) or None, got {m!r}")
        before = getattr(self, "compute_chunk", None)
        self.compute_chunk = m
        try:
            yield self
        finally:
            self.compute_chunk = before

    def describe(self) -> dict:
        """Provenance, as recorded in run.json and reports."""
        return {
            "source": self.source,
            "name": self.name,
            "dataset": self.dataset,
            "threat_model": self.threat_model,
            "eps": self.eps,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "sampling_mode": self.sampling_mode,
            "allow_other_size": self.allow_other_size,
            "check_range": self.check_range,
            "preprocess": None if self.preprocess is None else self.preprocess.describe(),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }


def _in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, m: int) -> torch.Tensor:
    """``fn`` on consecutive chunks of exactly ``m`` rows of ``z`` (each a fresh, aligned tensor; the last
    padded with zeros, the mean pixel once normalized), outputs concatenated; differentiable."""
    n = z.shape[0]
    if n == 0:
        return fn(z)
    outs = []
    for a in range(0, n, m):
        c = z[a:a + m]
        c = torch.cat([c, c.new_zeros(m - c.shape[0], *c.shape[1:])]) if c.shape[0] < m else c.clone()
        outs.append(fn(c)[: min(m, n - a)])
    return torch.cat(outs)


#: ``value(logits, y) -> (N,)``: the per-sample quantity whose input gradient :func:`input_grad` takes
ValueFn = Callable[[torch.Tensor, Any], torch.Tensor]


def input_grad(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, value: ValueFn,
               y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input-gradient pass: one forward of ``model`` at ``x``, one backward to ``x`` alone.

    ``v = value(model(x), y)``, ``g = d sum(v) / d x``. Samples are independent (eval mode), so the
    gradient of the sum is each sample's own gradient. Parameters receive no gradient
    (:func:`torch.autograd.grad` is asked for ``x`` only). Every input-gradient pass of the library
    is this one: the PGD loss (:func:`ebmlens.attacks.pgd`), the Langevin energies
    (:mod:`ebmlens.sampling.sgld`) and the OOD grad-norm score.

    Args:
        model: maps ``(N, C, H, W)`` pixels to ``(N, K)`` logits: an :class:`EnergyModel` (its unchecked
            ``forward``: iterates may leave [0, 1]) or any callable.
        x: ``(N, C, H, W)`` float images; not modified.
        value: ``value(logits, y) -> (N,)``, e.g. ``EnergyModel.joint_energy_from_logits`` (``E(x, y)``),
            ``lambda logits, _: model.energy_from_logits(logits)`` (``E(x)``) or
            ``lambda logits, y: attack_loss(logits, y, "ce")``.
        y: ``(N,)`` labels handed to ``value`` (``None`` when it needs none).

    Returns:
        ``(value (N,), grad (N, C, H, W), logits (N, K))``, all detached; ``grad`` has ``x``'s dtype.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> m = EnergyModel(net, input_shape=(3, 2, 2), num_classes=3)
    >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    >>> e, g, logits = input_grad(m, x, m.joint_energy_from_logits, y)  # E(x, y) = -f(x)[y]
    >>> tuple(e.shape), tuple(g.shape), tuple(logits.shape)
    ((4,), (4, 3, 2, 2), (4, 3))
    >>> bool(torch.allclose(g.flatten(1), -net[1].weight[y]))  # dE(x, y)/dx = -W[y] for a linear net
    True
    >>> e_marg, _, _ = input_grad(m, x, lambda lg, _: m.energy_from_logits(lg))  # E(x): y unused
    >>> bool(torch.all(e_marg <= e + 1e-6))
    True
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input_grad expects x as a torch.Tensor (N, C, H, W), got {type(x).__name__}")
    if not callable(value):
        raise TypeError(f"input_grad expects value as a callable value(logits, y) -> (N,), got {type(value).__name__}")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        v = value(logits, y)
        if not (isinstance(v, torch.Tensor) and v.shape == (x.shape[0],)):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"input_grad: value(logits, y) returned {got} for {x.shape[0]} images; it must "
                             "return one value per image, shape (N,) (no .sum() or .mean() inside)")
        if not v.requires_grad:
            raise ValueError("input_grad: value(logits, y) does not depend on the logits (no gradient to take); "
                             "compute it from the logits it is given")
        (grad,) = torch.autograd.grad(v.sum(), xg)
    return v.detach(), grad, logits.detach()


def energy_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deprecated (one release): use :func:`input_grad`. ``(fn(x) (N,), d sum(fn(x)) / d x)``, detached."""
    warnings.warn("ebmlens.energy.energy_grad(fn, x) is deprecated and goes in the next release; use "
                  "ebmlens.energy.input_grad(model, x, value, y), value(logits, y) -> (N,)",
                  DeprecationWarning, stacklevel=2)
    value, grad, _ = input_grad(fn, x, lambda v, _: v)
    return value, grad

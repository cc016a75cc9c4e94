"""Runs: many samples. The only part of ebmlens that knows batches, files, progress, resume, shards and
processes; the algorithms (initializers, stages, the pipeline) live in :mod:`ebmlens.sampling`, which
imports nothing from here.

* :func:`sample` (``ebmlens.sample``): the one-line entry point, ``sample(model, pipe, n, out, **options)``;
* :class:`RunOptions`: every option of a run, one frozen, validated dataclass (run.json's ``"options"``);
* :class:`RunPlan`: a validated run, carried out by :func:`run`; :func:`merge` merges a job array;
* modules: :mod:`.runner`, :mod:`.loop` (the batch loop), :mod:`.plan`, :mod:`.options`, :mod:`.record`
  (run.json), :mod:`.jobs` (locks, job arrays, the output-folder check), :mod:`.shards`, :mod:`.flat`
  (``images.npy`` / ``samples.npz``), :mod:`.writer` (background writer), :mod:`.outputs`, :mod:`.labels`.
"""

from __future__ import annotations

from .flat import SampleRun
from .options import RunOptions
from .plan import RunPlan
from .runner import merge, run, sample

__all__ = ["sample", "run", "merge", "RunOptions", "RunPlan", "SampleRun"]

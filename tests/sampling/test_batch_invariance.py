"""The same seed gives the same images for any batch size (issue 22 item 5): every preset, batch
sizes 1, 3, 7 and 16, bit for bit, on the CPU at the suite's thread count.

Two things make it hold: every initializer's arithmetic is per row (one matrix-vector product per
sample in GaussianInit/PCAInit), and the model runs in fixed compute chunks (``EnergyModel.chunked``):
the small MLP here gives rows of 1-3-row batches other float32 bits than rows of larger ones, which
Linf PGD's sign steps (and long chains) turn into different images.
"""

from __future__ import annotations

import pytest
import torch

from ebmlens import sampling as S
from ebmlens.rng import SampleStreams
from ebmlens.runs.options import CPU_COMPUTE_CHUNK, resolve_compute_chunk
from ebmlens.sampling import presets
from ebmlens.stats import class_mixture

from .conftest import SMALL_K, make_small_model

SIZES = (16, 7, 3, 1)
N = 16

#: short step counts; mixture-ascent stops samples at p(y|x) >= 0.5, so its passes shrink to odd row counts.
#: jempp samples with BatchNorm in train mode as published (the batch is coupled by design): eval here.
SHORT: dict[str, dict] = {
    "santurkar2019": {"steps": 4, "eps": 2.0, "step_size": 0.5},
    "jempp": {"steps": 3, "inner_steps": 2, "mode": "eval"},
    "robust-jem-energy": {"steps": 3, "inner_steps": 2},
    "robust-jem": {"attack_steps": 4, "steps": 3, "inner_steps": 2},
    "mirza2024": {"steps": 4},
    "dat2025": {"steps": 4},
    "mixture-ascent": {"steps": 6, "stop_at": 0.5},
}


@pytest.fixture(scope="module")
def mixture(small_data):
    return class_mixture(*small_data, components=2, rank=4, cluster_downsample=2)


def _pipeline(name: str, small_stats, small_data, mixture):
    if name == "dat2025":
        return presets.get(name, data=small_data[0], **SHORT[name])
    return presets.get(name, stats=mixture if name == "mixture-ascent" else small_stats, **SHORT[name])


def _in_batches(pipe, model, y: torch.Tensor, b: int, seed: int = 3) -> torch.Tensor:
    """The runner's loop: batches of ``b`` consecutive sample indices, streams keyed by index."""
    return torch.cat([pipe(model, y[s:s + b], generator=SampleStreams(seed, list(range(s, min(len(y), s + b))))).images
                      for s in range(0, len(y), b)])


def test_every_preset_is_covered():
    assert set(SHORT) == set(presets.names())


@pytest.mark.parametrize("name", list(SHORT))
def test_same_seed_same_images_for_any_batch_size(name, small_stats, small_data, mixture):
    model = make_small_model()
    pipe = _pipeline(name, small_stats, small_data, mixture)
    y = torch.arange(N) % SMALL_K
    with model.chunked(CPU_COMPUTE_CHUNK):
        out = {b: _in_batches(pipe, model, y, b) for b in SIZES}
    for b in SIZES[1:]:
        diff = (out[b] - out[SIZES[0]]).abs().flatten(1).amax(1)
        assert torch.equal(out[b], out[SIZES[0]]), (f"{name}: batch size {b} vs {SIZES[0]}: rows "
                                                   f"{torch.nonzero(diff).flatten().tolist()} differ by up to "
                                                   f"{float(diff.max()):.3g}")


def test_inits_are_per_row_without_model_chunks(small_stats, mixture):
    """The initializers alone (no model pass): a sample's start is the same bits in any batch."""
    model = make_small_model()
    y = torch.arange(N) % SMALL_K
    for init in (S.GaussianInit(small_stats), S.GaussianInit(small_stats, covariance="lowrank", rank=8),
                 S.GaussianInit(mixture), S.PCAInit(small_stats, sigma=0.05)):
        ref = init(model, y, generator=SampleStreams(1, list(range(N))))
        for b in (7, 3, 1):
            got = torch.cat([init(model, y[s:s + b], generator=SampleStreams(1, list(range(s, min(N, s + b)))))
                             for s in range(0, N, b)])
            assert torch.equal(got, ref), f"{init!r} batch {b}"


def test_chunks_keep_logits_and_gradients_and_spare_train_mode():
    model = make_small_model(batchnorm=True)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 0])
    calls: list[int] = []
    model.classifier.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    with model.chunked(4):
        xg = x.clone().requires_grad_(True)
        model.joint_energy_from_logits(model(xg), y).sum().backward()
        assert calls == [4, 4]                                        # 5 rows: a full chunk, then 1 + 3 padding
        torch.testing.assert_close(model(x[:1])[0], model(x)[0])
        with model.mode("train"):                                      # BatchNorm couples the batch: no chunks
            model(x)
    assert calls[-1] == 5 and model.compute_chunk is None
    xr = x.clone().requires_grad_(True)
    model.joint_energy_from_logits(model(xr), y).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)                        # same gradient as one whole-batch pass
    for bad in (0, -2, 1.5, True, "16"):
        with pytest.raises(ValueError, match="positive int"), model.chunked(bad):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="compute_chunk must be 'auto'"):
        resolve_compute_chunk(0, "cpu")
    assert resolve_compute_chunk("auto", "cpu") == CPU_COMPUTE_CHUNK and resolve_compute_chunk(None, "cpu") is None
    assert resolve_compute_chunk("auto", "cuda") is None


def test_the_runner_chunks_by_default(tmp_path, small_stats):
    """``ebmlens.sample`` at batch sizes 1, 3, 7 and 16 with its default ``compute_chunk="auto"`` (16 rows
    on the CPU): the same uint8 images and the same float32 energies (run.json's summary of every record;
    a record pass of 1-3 rows without chunks moves them); each attempt records the chunk it used."""
    import numpy as np

    import ebmlens

    model = make_small_model()
    pipe = presets.get("robust-jem", stats=small_stats, **SHORT["robust-jem"])
    imgs, energies = [], []
    for b in (1, 3, 7, 16):
        run = ebmlens.sample(model, pipe, 16, tmp_path / f"b{b}", batch_size=b, seed=5, png=False, grid=False)
        with np.load(run.images) as f:
            imgs.append(f["images"])
        energies.append([{k: v for k, v in r.items() if k != "seconds"} for r in run.run["energy"]])
        assert run.run["attempts"][-1]["compute_chunk"] == CPU_COMPUTE_CHUNK
    assert model.compute_chunk is None  # the user's model is left as it was
    assert all(np.array_equal(i, imgs[-1]) for i in imgs)
    assert all(e == energies[-1] for e in energies)

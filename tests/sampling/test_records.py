"""Records that reuse passes: which points are kept, forward counts per batch, and energies equal to
those of a separate record pass (fp32 and under bf16 autocast); the inits' per-class products."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ebmlens import sampling as S
from ebmlens.sampling import presets
from ebmlens.sampling.init import _per_class_matmul
from ebmlens.sampling.records import trace_to_cpu, with_sources

from .conftest import SMALL_K, make_small_model


class _Counting(nn.Module):
    """Wraps a classifier; counts forwards with and without autograd."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.grad, self.nograd = net, 0, 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.grad += 1
        else:
            self.nograd += 1
        return self.net(x)


def _counting_model():
    m = make_small_model()
    m.classifier = _Counting(m.classifier)
    return m, m.classifier


def _pipes(stats, data):
    return {
        "robust-jem": presets.get("robust-jem", stats=stats),
        "dat2025": presets.get("dat2025", data=data[0], steps=10),
        "santurkar2019": presets.get("santurkar2019", stats=stats, steps=4),
        "jempp": presets.get("jempp", stats=stats, steps=3),
        "mirza2024": presets.get("mirza2024", stats=stats, steps=4),
    }


def test_forward_counts_per_batch(small_stats, small_data):
    pipes = _pipes(small_stats, small_data)
    y = torch.arange(6) % SMALL_K
    m, c = _counting_model()
    out = pipes["dat2025"](m, y, generator=torch.Generator().manual_seed(0))
    assert (c.grad, c.nograd) == (10, 1)          # 11 classifier forwards per batch (a record pass each point: 12)
    assert [(r.index, r.source) for r in out.trace] == [(0, "pass"), (1, "record")]
    m, c = _counting_model()
    out = pipes["robust-jem"](m, y, generator=torch.Generator().manual_seed(0))
    assert (c.grad, c.nograd) == (65, 2)          # 15 PGD + 50 SGLD passes; before: 5 record passes
    assert [(r.index, r.stage, r.source) for r in out.trace] == [
        (0, "GaussianInit", "pass"), (1, "TargetedPGD", "record"), (2, "Contrast", "pass"), (4, "Clamp", "record")]
    for records, want in (("final", 1), ("none", 0), ("all", 3)):
        m, c = _counting_model()
        pipe = dataclasses.replace(pipes["robust-jem"], records=records)
        out = pipe(m, y, generator=torch.Generator().manual_seed(0))
        assert (c.grad, c.nograd) == (65, want), records
        assert len(out.trace) == {"final": 1, "none": 0, "all": 5}[records]


def _plain(stage):
    """The stage without its first-pass hook: the pipeline then measures its input with a record pass."""
    def run(model, x, y, *, generator=None, callback=None):
        return stage(model, x, y, generator=generator)
    run.__name__ = type(stage).__name__
    return run


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("name", ["robust-jem", "dat2025", "santurkar2019", "jempp", "mirza2024"])
def test_energies_from_passes_equal_the_record_pass(name, dtype, small_stats, small_data):
    pipe = dataclasses.replace(_pipes(small_stats, small_data)[name], records="all")
    ref_pipe = dataclasses.replace(pipe, stages=tuple(_plain(s) for s in pipe.stages))
    assert set(ref_pipe.record_points().values()) == {"record"}
    assert "pass" in pipe.record_points().values()
    y = torch.arange(8) % SMALL_K
    model = make_small_model(batchnorm=name == "jempp")
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    with ctx:
        out = pipe(model, y, generator=torch.Generator().manual_seed(3))
        ref = ref_pipe(model, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.images, ref.images)
    assert [r.index for r in out.trace] == [r.index for r in ref.trace]
    for r, q in zip(out.trace, ref.trace):
        assert r.energy.dtype == torch.float32 and r.joint_energy.dtype == torch.float32
        tol = 1e-5 if dtype is None else 1e-2
        torch.testing.assert_close(r.energy, q.energy, atol=tol, rtol=tol)
        torch.testing.assert_close(r.joint_energy, q.joint_energy, atol=tol, rtol=tol)


def test_record_points_follow_the_input_range(small_stats):
    pgd = S.TargetedPGD(S.L2Ball(1.0), steps=2, step_size=0.1)
    # a Gaussian init without clamp can leave [0, 1]: PGD starts at clamp(x) != x, so a record pass
    assert S.Pipeline(S.GaussianInit(small_stats, clamp=False), [pgd]).record_points() == {0: "record", 1: "record"}
    assert S.Pipeline(S.GaussianInit(small_stats), [pgd]).record_points() == {0: "pass", 1: "record"}
    assert S.Pipeline(S.NoiseInit(), [dataclasses.replace(pgd, random_start=True)]).record_points()[0] == "record"
    unclamped = S.SGLD(step_size=0.1, noise=0.0, steps=2, clamp=None)
    assert S.Pipeline(S.NoiseInit(), [unclamped, pgd]).record_points() == {0: "pass", 1: "record", 2: "record"}
    assert S.Pipeline(S.NoiseInit(), [unclamped, dataclasses.replace(pgd, clamp=None)]).record_points()[1] == "pass"
    with pytest.raises(ValueError, match="records must be one of"):
        S.Pipeline(S.NoiseInit(), [pgd], records="some")
    assert "records" not in S.Pipeline(S.NoiseInit(), [pgd]).config()
    assert S.Pipeline(S.NoiseInit(), [pgd], records="none").config()["records"] == "none"


def test_run_json_sources_come_from_the_plan():
    pipe = S.Pipeline(S.NoiseInit(), [S.SGLD(step_size=0.1, noise=0.0, steps=1), S.Clamp()])
    # shards key records by their position in the trace: the plan gives back the point indices
    entries = [{"index": 0, "stage": "NoiseInit", "source": "record"},
               {"index": 1, "stage": "Clamp", "source": "record"}]
    assert [(e["index"], e["source"]) for e in with_sources(entries, pipe)] == [(0, "pass"), (2, "record")]
    assert with_sources(entries, object()) == entries


def test_trace_to_cpu_moves_a_trace_in_one_copy(monkeypatch):
    recs = [S.StageRecord("A", 0, energy=torch.tensor([1.0, 2.0]), joint_energy=torch.tensor([3.0, 4.0]), seconds=0.1,
                          source="pass"),
            S.StageRecord("B", 1, energy=torch.tensor([5.0, 6.0]), joint_energy=torch.tensor([7.0, 8.0]), seconds=0.2)]
    assert trace_to_cpu(recs) == tuple(recs)       # already on the CPU: the same records
    meta = [dataclasses.replace(r, energy=r.energy.to("meta"), joint_energy=r.joint_energy.to("meta")) for r in recs]
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: copies.append(t.shape) or
                        torch.arange(1.0, 1.0 + t.numel()))
    out = trace_to_cpu(meta)
    monkeypatch.setattr(torch.Tensor, "cpu", real_cpu)
    assert copies == [torch.Size([8])]             # one transfer for the whole batch
    assert [r.energy.tolist() for r in out] == [[1.0, 2.0], [5.0, 6.0]]
    assert [r.joint_energy.tolist() for r in out] == [[3.0, 4.0], [7.0, 8.0]]
    assert [(r.stage, r.index, r.source) for r in out] == [("A", 0, "pass"), ("B", 1, "record")]


def test_inits_gather_per_class_matrices_without_a_host_read(monkeypatch):
    g = torch.Generator().manual_seed(0)
    z, mats, y = torch.randn(7, 5, generator=g), torch.randn(3, 4, 5, generator=g), torch.tensor([2, 0, 2, 1, 0, 0, 2])
    want = torch.stack([mats[k] @ z[i] for i, k in enumerate(y.tolist())])
    torch.testing.assert_close(_per_class_matmul(z, mats, y, gather=False), want)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda *a, **k: pytest.fail("the gather path reads labels on the host"))
    torch.testing.assert_close(_per_class_matmul(z, mats, y, gather=True), want)


# ----------------------------------------------------------------------------- a user's stage (issue 19 item 3)
@dataclasses.dataclass(frozen=True)
class Invert:
    """A user's own pixel map, declared as one (as ebmlens's Clamp and Contrast are)."""

    pixel_map = True

    def unit_range_after(self, unit_in: bool) -> bool:
        return unit_in

    def __call__(self, model, x, y, *, generator=None, callback=None):
        return 1 - x


@dataclasses.dataclass(frozen=True)
class UnitClamp:
    """A user's clamp to [0, 1] that declares it keeps the unit range (not a pixel map here: it says nothing)."""

    def unit_range_after(self, unit_in: bool) -> bool:
        return True

    def __call__(self, model, x, y, *, generator=None, callback=None):
        return x.clamp(0, 1)


def test_a_users_stage_is_planned_by_what_it_declares_like_ours():
    sgld = S.SGLD(step_size=0.1, noise=0.0, steps=2)
    ours = S.Pipeline(S.NoiseInit(), [sgld, S.Clamp()])
    theirs = S.Pipeline(S.NoiseInit(), [sgld, Invert()])
    assert theirs.record_points() == ours.record_points() == {0: "pass", 2: "record"}  # no record before the map
    pgd = S.TargetedPGD(S.L2Ball(0.5), steps=2, step_size=0.1)  # clamps to [0, 1]: a pass at its input needs one
    wide = S.GaussianInit(S.class_stats(torch.rand(8, 3, 8, 8), torch.arange(8) % SMALL_K), clamp=False)
    assert S.Pipeline(wide, [UnitClamp(), pgd]).record_points() == {0: "record", 1: "pass", 2: "record"}
    assert S.Pipeline(wide, [S.Clamp(), pgd]).record_points() == {0: "record", 1: "pass", 2: "record"}
    assert S.Pipeline(wide, [lambda m, x, y, generator=None: x.clamp(0, 1), pgd]).record_points()[1] == "record"


def test_a_users_stage_runs_with_the_records_it_was_planned():
    model = make_small_model()
    pipe = S.Pipeline(S.NoiseInit(), [S.SGLD(step_size=0.05, noise=0.0, steps=2), UnitClamp(), Invert()],
                      records="all")
    out = pipe(model, torch.arange(SMALL_K), generator=torch.Generator().manual_seed(0))
    assert [(r.index, r.stage, r.source) for r in out.trace] == [
        (0, "NoiseInit", "pass"), (1, "SGLD", "record"), (2, "UnitClamp", "record"), (3, "Invert", "record")]
    with torch.no_grad():
        e = model.energy_from_logits(model(out.images))
    torch.testing.assert_close(out.trace[-1].energy, e)

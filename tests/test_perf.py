"""ebmlens._perf on the CPU: validation, channels_last keeps outputs, the batch-size search, memory."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ebmlens import _perf


def test_prepare_model_channels_last_keeps_outputs(tiny_model):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = tiny_model.logits(x).detach()
    out = _perf.prepare_model(tiny_model, channels_last=True)
    assert out is tiny_model
    conv = next(m for m in tiny_model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    after = tiny_model.logits(x).detach()
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-5)
    # the input gradient, what samplers use, is unchanged too
    xg = x.clone().requires_grad_()
    (g1,) = torch.autograd.grad(tiny_model.energy(xg).sum(), xg)
    assert g1.shape == x.shape and torch.isfinite(g1).all()


def test_prepare_model_compile_wraps_the_classifier(tiny_model, monkeypatch):
    # torch.compile itself is not run here (importing dynamo takes ~20 s on this machine); we check that
    # prepare_model hands it the classifier, keeps the wrapper, and uses what it returns.
    seen = []

    def fake_compile(mod, **kw):
        seen.append(mod)
        return torch.nn.Sequential(mod)

    monkeypatch.setattr(torch, "compile", fake_compile)
    orig = tiny_model.classifier
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = tiny_model.logits(x).detach()
    out = _perf.prepare_model(tiny_model, compile=True)
    assert out is tiny_model and seen == [orig] and tiny_model.classifier[0] is orig
    assert torch.equal(tiny_model.logits(x).detach(), before)
    plain = torch.nn.Linear(2, 2)
    assert _perf.prepare_model(plain, compile=True)[0] is plain  # a bare module is compiled whole


def test_prepare_model_validation(tiny_model):
    with pytest.raises(TypeError, match="nn.Module"):
        _perf.prepare_model(lambda x: x)
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        _perf.prepare_model(tiny_model, channels_last="yes")


def test_autocast_context_choices():
    assert isinstance(_perf.autocast_context("cpu", None), contextlib.nullcontext)
    assert isinstance(_perf.autocast_context("cpu", "float32"), contextlib.nullcontext)
    assert isinstance(_perf.autocast_context("cpu", torch.float32), contextlib.nullcontext)
    a = torch.rand(4, 4)
    with _perf.autocast_context("cpu", "bfloat16"):
        assert (a @ a).dtype == torch.bfloat16
    with _perf.autocast_context(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="float16 autocast is for CUDA"):
        _perf.autocast_context("cpu", "float16")
    with pytest.raises(ValueError, match="must be one of"):
        _perf.autocast_context("cpu", "int8")
    with pytest.raises(ValueError, match="must be one of"):
        _perf.autocast_context("cpu", torch.int64)
    with pytest.raises(ValueError, match="unknown device 'gpu0'; choose auto, cpu, cuda"):
        _perf.autocast_context("gpu0", "bfloat16")  # the one device parser (ebmlens._validate.parse_device)
    with pytest.raises(ValueError, match="autocast_context: 'auto' is not a device here"):
        _perf.autocast_context("auto", "bfloat16")
    assert _perf.fast_settings(torch.device("cuda", 1))["compile"]  # a device this machine may lack: settings only


def test_auto_batch_size_rejects_cpu(tiny_model):
    with pytest.raises(ValueError, match="needs a CUDA device, got 'cpu'.*--batch-size"):
        _perf.auto_batch_size(tiny_model, lambda m, b: None, "cpu")


@pytest.mark.parametrize("limit,start,max_", [(300, 64, 8192), (5, 64, 8192), (1, 1, 16), (100000, 64, 4096),
                                             (64, 64, 8192), (37, 8, 40)])
def test_search_finds_largest_fitting_size(limit, start, max_):
    tried = []

    def fits(b):
        tried.append(b)
        return b <= limit

    found = _perf._search(fits, start, max_)
    want = min(limit, max_)
    assert found is not None and found <= want
    assert found >= want - max(1, want // 16)    # within the bisection's stopping tolerance
    assert len(tried) <= 24


def test_search_none_when_nothing_fits():
    assert _perf._search(lambda b: False, 64, 1024) is None


def test_oom_recognised():
    assert _perf._is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not _perf._is_oom(RuntimeError("shape mismatch"))


def test_peak_memory_per_image_cpu_grows_with_work(tiny_model):
    def work(model, b):
        big = torch.ones(b, 1024, 1024)          # 4 MiB per image, touched
        return float(big.sum())

    # Measured in a fresh process: inside a long test session glibc may hand the 32 MiB back from
    # memory that is already resident, so the peak would not move.
    import subprocess
    import sys

    code = ("import torch; from ebmlens import _perf; from ebmlens.models.archs import ConvNetSmall\n"
            "from ebmlens.energy import EnergyModel\n"
            "m = EnergyModel(ConvNetSmall(), num_classes=10)\n"
            "work = lambda model, b: float(torch.ones(b, 1024, 1024).sum())\n"
            "print(_perf.peak_memory_per_image(m, work, 'cpu', 8))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    per = float(r.stdout.strip().splitlines()[-1])
    assert 3 * 2**20 <= per <= 8 * 2**20
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        _perf.peak_memory_per_image(tiny_model, work, "cpu", 0)
    with pytest.raises(TypeError, match="Pipeline or a step function"):
        _perf.peak_memory_per_image(tiny_model, 3, "cpu", 2)


_PIPELINE_PEAKS = """
import json, torch
from torch import nn
from ebmlens import _perf
from ebmlens.energy import EnergyModel
from ebmlens.sampling import NoiseInit, Pipeline, SGLD
torch.set_num_threads(1)
out = {}
for s in (64, 256):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # inside the fork (and a fresh process): the caller's state is untouched
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 10))
    m = EnergyModel(net, input_shape=(3, s, s), num_classes=10)
    pipe = Pipeline(NoiseInit(), [SGLD(step_size=0.01, noise=0.0, steps=1)])
    _perf.peak_memory_per_image(m, pipe, "cpu", 8)  # warm-up
    out[s] = _perf.peak_memory_per_image(m, pipe, "cpu", 8)
print(json.dumps(out))
"""


def test_peak_memory_per_image_runs_a_pipeline_and_scales_with_the_image():
    # One SGLD step of a conv net keeps (for its input gradient) the 8-channel conv output and the
    # ReLU output, 2 x 8 x S x S floats per image, besides the image, its gradient and the noise; the
    # whole step stays well under 32 images' worth of floats. A fresh process with a fixed mmap
    # threshold returns freed buffers to the OS, so that the peak is that of this run.
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    r = subprocess.run([sys.executable, "-c", _PIPELINE_PEAKS], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    per = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    for s in (64, 256):
        image = 3 * s * s * 4
        assert 2 * 8 * s * s * 4 <= per[s] <= 32 * image, (s, per[s] / image, per)
    assert 8 <= per[256] / per[64] <= 32, per  # 16x the pixels: about 16x the memory


def test_input_grad_flops_counts_convs_and_linears():
    from ebmlens.energy import EnergyModel

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    m = EnergyModel(net, input_shape=(3, 8, 8), num_classes=5)
    fwd = 2 * (4 * 8 * 8) * 3 * 9 + 2 * 5 * 256            # conv + linear multiply-adds, x2
    assert _perf.input_grad_flops(m, 1) == 2 * fwd            # forward + input-gradient backward
    assert _perf.input_grad_flops(m, 3) == 6 * fwd
    with pytest.raises(TypeError, match="input_shape"):
        _perf.input_grad_flops(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch_size"):
        _perf.input_grad_flops(m, 0)


def test_prepare_model_on_a_copy_leaves_the_model(tiny_model, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda mod, **kw: torch.nn.Sequential(mod))
    orig = tiny_model.classifier
    out = _perf.prepare_model(tiny_model, compile=True, inplace=False)
    assert out is not tiny_model and tiny_model.classifier is orig and out.classifier[0] is orig  # weights shared
    out = _perf.prepare_model(tiny_model, channels_last=True, inplace=False)
    conv = next(m for m in out.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in tiny_model.parameters()) and tiny_model.classifier is orig
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda mod, **kw: seen.update(kw) or mod)
    wrapped = _perf.prepare_model(tiny_model, compile=True, compile_mode="reduce-overhead", inplace=False)
    assert seen == {"mode": "reduce-overhead", "dynamic": False}     # one CUDA graph per batch shape
    assert isinstance(wrapped.classifier, _perf._CudaGraphSteps) and tiny_model.classifier is orig


def test_fast_settings_and_matmul_precision():
    assert _perf.fast_settings("cpu", dtype="float32") == {"dtype": "float32", "channels_last": False,
                                                           "compile": False, "compile_mode": None,
                                                           "matmul_precision": None}
    assert _perf.fast_settings("cuda") == _perf.FAST_CUDA
    assert _perf.fast_settings("cuda:1", dtype="float16")["dtype"] == "float16"
    before = torch.get_float32_matmul_precision()
    other = "medium" if before != "medium" else "high"
    with _perf.matmul_precision(other) as p:
        assert p == other == torch.get_float32_matmul_precision()
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match="matmul precision"):
        with _perf.matmul_precision("fastest"):
            pass

"""What evaluate accepts (arrays, folders, samples.npz, specs, statistics files) and the errors it teaches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ebmlens.metrics import evaluate, load_reference_stats, reference_stats


def _rand(n, seed=0, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_float_and_uint8_inputs_agree(small_net):
    x, r = _rand(30), _rand(20, 1)
    u8 = x.mul(255).round().byte().permute(0, 2, 3, 1).numpy()          # uint8 NHWC
    a = evaluate(x, r, "fid,is", small_net(), splits=3)
    b = evaluate(u8, r, "fid,is", small_net(), splits=3)
    assert a.values == b.values and a.fingerprint == b.fingerprint


def test_samples_folder_and_spec(tmp_path, cifar_test, small_net):
    idx = cifar_test.strided(40)
    np.savez(tmp_path / "samples.npz", images=cifar_test.images[idx], labels=cifar_test.labels[idx])
    ref = f"npz:{tmp_path / 'samples.npz'}"
    r = evaluate(tmp_path, ref, "fid", small_net())
    assert r.num_images == 40 and abs(r.values["fd_smallnet"]) < 1e-9
    assert "samples.npz" in r.ref
    # a data spec without @split means the test split; the report says which
    spec = cifar_test.source.rsplit("@", 1)[0]
    cheap = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    r = evaluate(tmp_path, spec, "fid", cheap, batch_size=2500)
    assert r.ref.endswith("@test") and r.num_ref_images == 10000


def test_reference_stats_round_trip(tmp_path, small_net):
    x, ref = _rand(40), _rand(50, 1)
    path = tmp_path / "stats.npz"
    s = reference_stats(ref, small_net(), out=path, keep_features=True)
    loaded = load_reference_stats(path)
    np.testing.assert_array_equal(loaded.mu, s.mu)
    np.testing.assert_array_equal(loaded.sigma, s.sigma)
    np.testing.assert_array_equal(loaded.features, s.features)
    assert (loaded.count, loaded.fingerprint, loaded.network, loaded.layer, loaded.network_fingerprint) == \
           (50, s.fingerprint, "SmallNet", "fc:input", s.network_fingerprint)
    direct = evaluate(x, ref, "fid,kid", small_net(), kid_subsets=4)
    via_file = evaluate(x, path, "fid,kid", small_net(), kid_subsets=4)
    assert via_file.values == pytest.approx(direct.values, rel=1e-9, abs=1e-12)
    assert via_file.ref_fingerprint == direct.ref_fingerprint and via_file.num_ref_images == 50


def test_reference_stats_refuse_mismatches(tmp_path, small_net):
    path = tmp_path / "stats.npz"
    reference_stats(_rand(20), small_net(), out=path)
    with pytest.raises(ValueError, match="KID needs the reference features.*keep_features"):
        evaluate(_rand(20, 1), path, "kid", small_net())
    with pytest.raises(ValueError, match="other weights"):
        evaluate(_rand(20, 1), path, "fid", small_net(seed=1))
    with pytest.raises(ValueError, match="computed in SmallNet at fc:input"):
        evaluate(_rand(20, 1), path, "fid", small_net(), layer="features.3")
    with pytest.raises(FileNotFoundError, match="--make-ref-stats"):
        load_reference_stats(tmp_path / "nope.npz")


def _write(folder, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:03d}.png")


def test_bad_inputs_teach(tmp_path, small_net):
    net, ref = small_net(), _rand(20)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        evaluate(tmp_path / "empty", ref, "fid", net)
    rng = np.random.default_rng(0)
    _write(tmp_path / "mixed", [rng.integers(0, 255, (16, 16, 3), np.uint8),
                                rng.integers(0, 255, (20, 20, 3), np.uint8)])
    with pytest.raises(ValueError, match="different sizes"):
        evaluate(tmp_path / "mixed", ref, "fid", net)
    with pytest.raises(ValueError, match="grayscale"):
        evaluate(torch.rand(8, 1, 16, 16), ref, "fid", net)
    np.savez(tmp_path / "gray.npz", images=rng.integers(0, 255, (8, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="grayscale"):
        evaluate(tmp_path / "gray.npz", ref, "fid", net)
    with pytest.raises(ValueError, match="splits=10 needs at least 10 images, got 5"):
        evaluate(_rand(5), None, "is", net)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        evaluate(_rand(12) * 2 - 1, ref, "fid", net)
    with pytest.raises(ValueError, match="channels last"):
        evaluate(_rand(12).permute(0, 2, 3, 1).contiguous(), ref, "fid", net)
    with pytest.raises(ValueError, match="need a reference"):
        evaluate(_rand(12), None, "fid", net)
    with pytest.raises(ValueError, match="unknown metrics.*'fd'"):
        evaluate(_rand(12), ref, "is,fd", net)
    with pytest.raises(FileNotFoundError, match="'no_such_folder' does not exist"):
        evaluate("no_such_folder", ref, "fid", net)
    with pytest.raises(ValueError, match="unknown data spec"):
        evaluate("cifar11:x", ref, "fid", net)
    with pytest.raises(TypeError, match="feature_model must be an nn.Module"):
        evaluate(_rand(12), ref, "fid", 42)
    with pytest.raises(ValueError, match="IS needs class logits"):
        evaluate(_rand(12), None, "is", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 1)), splits=2)

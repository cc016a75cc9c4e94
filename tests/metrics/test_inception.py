"""The standard path: torch-fidelity's Inception, run end to end on a random state dict of the right
shapes (made here; the official file is not on this project's machines), and the weights checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch_fidelity  # noqa: F401 - the `metrics` extra; the test extra installs it (a missing extra fails)

from ebmlens.metrics import evaluate
from ebmlens.metrics.features import INCEPTION_FILE_NAMES, find_inception_weights


def _random_inception_state_dict() -> dict:
    """Shapes from torch-fidelity's own architecture, values random (BatchNorm: mean 0, var 1)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # build the layers, load nothing
            return None

    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        empty = os.path.join(d, "empty.pth")
        torch.save({}, empty)
        shapes = Skeleton("skeleton", ["2048"], feature_extractor_weights_path=empty).state_dict()
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, v in shapes.items():
        if k.endswith(("running_var", "bn.weight")):
            out[k] = torch.ones_like(v)
        elif k.endswith(("running_mean", "bn.bias", "num_batches_tracked")):
            out[k] = torch.zeros_like(v)
        elif v.dim() > 1:
            out[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.01
    return out


@pytest.fixture(scope="module")
def fake_official(tmp_path_factory):
    """A random Inception saved under the official file's name (its sha256 cannot match)."""
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE_NAMES[0]
    torch.save(_random_inception_state_dict(), path)
    return path


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("EBMLENS_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("EBMLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


def test_missing_weights_name_the_file(no_weights_anywhere, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth.*--inception-weights PATH"):
        evaluate(torch.rand(20, 3, 32, 32), torch.rand(20, 3, 32, 32))
    with pytest.raises(FileNotFoundError, match="nope.pth' does not exist.*pt_inception-2015-12-05-6726825d"):
        evaluate(torch.rand(20, 3, 32, 32), None, "is", inception_weights=tmp_path / "nope.pth")


def test_weights_found_without_network(no_weights_anywhere, fake_official, monkeypatch, tmp_path):
    monkeypatch.setenv("EBMLENS_INCEPTION_WEIGHTS", str(fake_official))
    assert find_inception_weights() == fake_official
    monkeypatch.delenv("EBMLENS_INCEPTION_WEIGHTS")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    cached = tmp_path / "hub" / "checkpoints" / INCEPTION_FILE_NAMES[1]    # where torch-fidelity would cache it
    cached.write_bytes(fake_official.read_bytes())
    assert find_inception_weights() == cached


def test_unofficial_files_are_refused(fake_official, tmp_path):
    x = torch.rand(20, 3, 32, 32)
    with pytest.raises(ValueError, match="named for sha256 6726825d.*corrupted.*trust_checkpoint=True"):
        evaluate(x, None, "is", inception_weights=fake_official)
    other = tmp_path / "my_inception.pth"
    other.write_bytes(fake_official.read_bytes())
    with pytest.raises(ValueError, match="not the official Inception file.*refused"):
        evaluate(x, None, "is", inception_weights=other)


def test_torch_fidelity_plumbing_end_to_end(fake_official, cifar_test):
    idx = cifar_test.strided(80)
    images, ref = cifar_test.tensor(idx[:64]), cifar_test.images[idx[64:]]      # float NCHW and uint8 NHWC
    r = evaluate(images, ref, ("is", "fid", "kid"), inception_weights=fake_official, trust_checkpoint=True,
                 batch_size=40, kid_subsets=10)
    assert set(r.values) == {"is_mean", "is_std", "fid", "kid_mean", "kid_std"}
    assert all(math.isfinite(v) for v in r.values.values())
    assert r.inception_score == r.is_mean == r.values["is_mean"] >= 1.0
    assert r.fid == r.values["fid"] > 0 and r.kid == r.values["kid_mean"]
    assert r.weights == str(fake_official) and INCEPTION_FILE_NAMES[0] in r.to_json()
    assert len(r.weights_sha256) == 64 and r.weights_official is False and r.standard is False
    assert (r.network, r.layer, r.num_images, r.num_ref_images, r.splits, r.kid_subset_size) == \
           ("inception-v3-compat", "2048", 64, 16, 10, 16)
    assert all("torch-fidelity 0.4" in r.implementation[k] for k in ("is", "fid", "kid"))
    assert r.versions["torch-fidelity"].startswith("0.4")

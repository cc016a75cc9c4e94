"""Shared fixtures. Data comes from ../shared/data (never the network); decoded arrays are cached
under $EBMLENS_CACHE (default ~/.cache/ebmlens), so the archive is decoded once per machine."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
import torch

from ebmlens.data import default_cifar10_path, load_data
from ebmlens.energy import EnergyModel
from ebmlens.models.archs import ConvNetSmall

torch.set_num_threads(int(os.environ.get("EBMLENS_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _torch_globals_restored():
    """Each test starts from the global RNG state and thread count the previous one found, so that no
    test depends on the order they run in. Tests draw randomness from local generators; a test that
    must touch the global generator (to show that it does not matter) is rolled back here. A test that
    changes the thread count fails: restore it where it is changed (try/finally)."""
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    yield
    torch.random.set_rng_state(state)
    now = torch.get_num_threads()
    if now != threads:
        torch.set_num_threads(threads)
        pytest.fail(f"the test changed torch's thread count from {threads} to {now} and left it so; "
                    "restore it (threads = torch.get_num_threads(); ...; finally: torch.set_num_threads(threads))")


@pytest.fixture(scope="session")
def cifar_path() -> Path:
    p = default_cifar10_path()
    assert p is not None and p.exists(), (
        "CIFAR-10 archive not found: put ../shared/data/cifar10-jpeg.tar.xz beside the checkout "
        "or set EBMLENS_CIFAR10")
    return p


@pytest.fixture(scope="session")
def cifar_spec(cifar_path) -> str:
    return f"cifar10:{cifar_path}"


@pytest.fixture(scope="session")
def cifar_test(cifar_spec):
    return load_data(cifar_spec, "test")


@pytest.fixture(scope="session")
def cifar_train(cifar_spec):
    return load_data(cifar_spec, "train")


def make_tiny_model(seed: int = 0, num_classes: int = 10) -> EnergyModel:
    """A small random ConvNet as an EnergyModel (fast; for contracts, not quality)."""
    g = torch.Generator().manual_seed(seed)
    net = ConvNetSmall(num_classes=num_classes, widths=(8, 16, 16, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.05))
    return EnergyModel(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_shape=(3, 32, 32),
                       num_classes=num_classes, source="test", name="tiny")


@pytest.fixture
def tiny_model() -> EnergyModel:
    return make_tiny_model()


@pytest.fixture(scope="session")
def robust_model() -> EnergyModel:
    """The bundled robust model (ebmlens:cifar10-l2-small). During development only,
    EBMLENS_DEV_ROBUST=path/to/epoch_NNN.pt stands in for it before it ships."""
    dev = os.environ.get("EBMLENS_DEV_ROBUST")
    import ebmlens

    if dev:
        return ebmlens.load_model(f"file:{dev}")
    return ebmlens.load_model("ebmlens:cifar10-l2-small")


def json_numbers(obj, path=""):
    """Every number in a JSON tree, by its path (to compare two reports number by number)."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in json_numbers(val, f"{path}/{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in json_numbers(val, f"{path}[{i}]").items()}
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {path: obj}
    return {}


def hf_put(cache: Path, repo: str, files: dict[str, bytes], commit: str = "a" * 40, ref: str | None = "main") -> Path:
    """Write ``files`` as huggingface_hub does: blobs by hash, snapshot links into them, a ref."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        h = hashlib.sha256(data).hexdigest()
        (folder / "blobs" / h).write_bytes(data)
        (snap / name).symlink_to(Path("..", "..", "blobs", h))
    if ref:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return folder


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No socket opens (a test that tries fails); ``HF_HUB_CACHE`` is an empty folder of the test's own,
    returned for the test to fill (``hf_put``)."""
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield tmp_path / "hub"
    assert calls == [], f"network access attempted: {calls}"

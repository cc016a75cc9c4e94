"""dynamics over a run's checkpoints: glob order, epochs from meta, per-epoch gaps, outputs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebmlens.analysis import DynamicsReport, dynamics, energy_report
from ebmlens.models.archs import ConvNetSmall

from .conftest import make_image_data


def _save_run(folder, epochs=(1, 2, 10)):
    """Checkpoints in the ``ebmlens train`` format: {"state_dict", "ebmlens_meta"}."""
    folder.mkdir()
    for ep in epochs:
        with torch.random.fork_rng(devices=[]):  # one seeded net per epoch; the global generator is untouched
            torch.manual_seed(ep)
            net = ConvNetSmall(num_classes=10)
        meta = {"arch": "convnet-small", "num_classes": 10, "class_names": [f"c{i}" for i in range(10)],
                "mean": [0.5] * 3, "std": [0.25] * 3, "input_shape": [3, 16, 16], "epoch": ep}
        torch.save({"state_dict": net.state_dict(), "ebmlens_meta": meta}, folder / f"epoch_{ep:03d}.pt")
    return folder


def test_dynamics_over_glob(tmp_path):
    run = _save_run(tmp_path / "run")
    data = make_image_data(n=12, shape=(16, 16, 3))
    dyn = dynamics(str(run / "epoch_*.pt"), data, ["pgd"], threat_model="L2", eps=0.5, n=12, steps=2, n_boot=200)
    assert isinstance(dyn, DynamicsReport)
    assert dyn.epochs == (1, 2, 10)  # numeric order, not "epoch_010" < "epoch_002" surprises
    assert [p.rsplit("/", 1)[1] for p in dyn.checkpoints] == ["epoch_001.pt", "epoch_002.pt", "epoch_010.pt"]
    # each epoch's numbers are those of a plain energy_report on that checkpoint
    import ebmlens

    m2 = ebmlens.load_model(f"file:{run / 'epoch_002.pt'}")
    rep = energy_report(m2, data, ["pgd"], threat_model="L2", eps=0.5, n=12, steps=2, n_boot=200)
    np.testing.assert_allclose(dyn.gap("pgd")[1], rep["pgd"].gap_energy.estimate, rtol=1e-5)
    table = dyn.table()
    assert table.splitlines()[0].startswith("| epoch | clean acc") and len(table.splitlines()) >= 5
    csv_text = dyn.to_csv(tmp_path / "d.csv")
    assert csv_text.splitlines()[0].startswith("epoch,checkpoint,n,clean_acc")
    assert '"epochs": [' in dyn.to_json(tmp_path / "d.json")
    import matplotlib  # noqa: F401 - the test extra installs it; a missing extra must fail, not skip
    assert dyn.plot(tmp_path / "d.png").stat().st_size > 5000


def test_checkpoint_glob_matching_nothing_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint matches") as e:
        dynamics(str(tmp_path / "nothing_*.pt"), make_image_data(), ["pgd"], eps=0.5)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="checkpoints is empty"):
        dynamics([], make_image_data(), ["pgd"], eps=0.5)

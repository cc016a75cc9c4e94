"""Reference equivalence: our Linf TargetedPGD (no random start) equals torchattacks' targeted PGD
step for step on the same model and inputs."""

from __future__ import annotations

import contextlib
import io

import torch

from ebmlens import sampling as S

from .conftest import SMALL_K, SMALL_SHAPE, make_small_model


def _torchattacks_targeted_pgd(model, x, target, eps, alpha, steps):
    import torchattacks

    with torch.random.fork_rng(), contextlib.redirect_stdout(io.StringIO()):
        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
        atk.set_mode_targeted_by_label(quiet=True)
        return atk(x, target)


def test_linf_targeted_pgd_equals_torchattacks_step_for_step():
    model = make_small_model(seed=3)
    x = torch.rand(12, *SMALL_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = (model.logits(x).argmax(1) + 1) % SMALL_K
    eps, alpha = 8 / 255, 2 / 255
    global_state = torch.random.get_rng_state()
    prev = None
    for steps in range(1, 7):
        ours = S.TargetedPGD(S.LinfBall(eps), steps=steps, step_size=alpha, loss="ce")(model, x, target)
        ref = _torchattacks_targeted_pgd(model, x, target, eps, alpha, steps)
        assert torch.allclose(ours, ref, atol=1e-6), f"differs after {steps} steps"
        if prev is not None:
            assert not torch.allclose(ours, prev)   # every step moves: the comparison is not vacuous
        prev = ours
    assert torch.equal(torch.random.get_rng_state(), global_state)

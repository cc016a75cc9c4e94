"""The attack-name registry: names, aliases, errors, targets, and torchattacks' isolation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ebmlens.attacks import ATTACKS, attack_loss, choose_targets, get_attack, list_attacks, resolve_attack_name

from .conftest import make_linear_model

PAPER_EIGHT = ["pgd", "tpgd", "apgd-ce", "apgd-t", "apgd-dlr", "fab", "square", "cw"]


def test_paper_attacks_and_aliases_resolve():
    names = {s.name for s in list_attacks()}
    assert set(PAPER_EIGHT) | {"pgd-targeted"} <= names
    assert resolve_attack_name("APGD").name == "apgd-ce"
    assert resolve_attack_name("pgd_t").name == "pgd-targeted"
    assert resolve_attack_name("apgdt").name == "apgd-t"
    assert list_attacks()[0].backend == "ebmlens"  # ours first


def test_unknown_attack_lists_choices_and_close_matches():
    with pytest.raises(ValueError) as e:
        get_attack("pgdd", eps=0.1)
    msg = str(e.value)
    assert "'pgdd'" in msg and "did you mean" in msg and "apgd-ce" in msg and "\n" not in msg


@pytest.mark.parametrize("eps", [0, -0.1, float("nan"), float("inf")])
def test_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        get_attack("pgd", threat_model="L2", eps=eps)


def test_modes_torchattacks_cannot_do_fail_clearly():
    with pytest.raises(ValueError, match="untargeted only.*apgd-t"):
        get_attack("apgd-ce+targeted", eps=0.1)
    with pytest.raises(ValueError, match="Linf only"):
        get_attack("tpgd", threat_model="L2", eps=0.5)
    with pytest.raises(ValueError, match="no option"):
        get_attack("pgd", eps=0.1, n_queries=5)
    assert get_attack("square+targeted", eps=0.1).name == "square-targeted"


def test_choose_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g)
    y = torch.randint(0, 10, (500,), generator=g)
    t = choose_targets(logits, y, "random", g)
    assert bool((t != y).all()) and set(t.tolist()) == set(range(10))
    ll = choose_targets(logits, y, "least-likely")
    masked = logits.clone()
    masked[torch.arange(500), y] = float("inf")
    assert torch.equal(ll, masked.argmin(1)) and bool((ll != y).all())
    given = torch.full((500,), 3)
    assert torch.equal(choose_targets(logits, y, "given", given=given), given)
    with pytest.raises(ValueError, match="needs the targets"):
        choose_targets(logits, y, "given")
    with pytest.raises(ValueError, match="class indices"):
        choose_targets(logits, y, "given", given=torch.full((500,), 10))


def test_our_pgd_targeted_reaches_target_and_stays_in_ball():
    m = make_linear_model(scale=0.2)
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = m(x).argmax(1)
    t = choose_targets(m(x), y, "random", torch.Generator().manual_seed(2))
    a = get_attack("pgd-targeted", threat_model="L2", eps=2.0, steps=20)
    xa = a(m, x, y, target=t)
    assert (xa - x).flatten(1).norm(dim=1).max() <= 2.0 + 1e-5
    assert float((m(xa).argmax(1) == t).float().mean()) > 0.8
    with pytest.raises(ValueError, match="targeted: pass target"):
        a(m, x, y)
    with pytest.raises(ValueError, match="takes no target"):
        get_attack("pgd", eps=0.1)(m, x, y, target=t)


def test_missing_labels_and_class_fail_clearly():
    """y=None reached torchattacks as ``None.to(...)`` (AttributeError); a torchattacks spec without a
    class reached it as ``None``: both now fail naming the attack."""
    import torchattacks  # noqa: F401 - the test extra installs it; a missing extra must fail, not skip
    m = make_linear_model(scale=0.2)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with pytest.raises(TypeError, match="pgd needs y"):
        get_attack("pgd", threat_model="L2", eps=0.5)(m, x, None)
    with pytest.raises(TypeError, match="'ta-pgd' needs y"):
        get_attack("ta-pgd", threat_model="L2", eps=0.5, steps=1)(m, x, None)
    a = get_attack("ta-pgd", threat_model="L2", eps=0.5, steps=1)
    bare = dataclasses.replace(a, spec=dataclasses.replace(a.spec, torchattacks_class=None))
    with pytest.raises(ValueError, match="'ta-pgd' has backend 'torchattacks' but no torchattacks_class"):
        bare(m, x, m(x).argmax(1))


@pytest.mark.parametrize("name", sorted(n for n, s in ATTACKS.items() if s.backend == "torchattacks"))
def test_torchattacks_run_isolated(name, capfd):
    import torchattacks  # noqa: F401 - the test extra installs it; a missing extra must fail, not skip
    m = make_linear_model(scale=0.2)
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = m(x).argmax(1)
    tm, eps = ("Linf", 8 / 255) if name == "tpgd" else ("L2", 0.5)
    opts = {"n_queries": 20} if name.startswith("square") else {"steps": 3}
    a = get_attack(name, threat_model=tm, eps=eps, **opts)
    t = choose_targets(m(x), y, "random", torch.Generator().manual_seed(0)) if a.needs_target else None
    with torch.random.fork_rng(devices=[]):  # this test's own global seed, restored on exit
        torch.manual_seed(1234)
        state = torch.random.get_rng_state()
        xa = a(m, x, y, target=t, generator=torch.Generator().manual_seed(5))
        assert torch.equal(torch.random.get_rng_state(), state), "a torchattacks attack changed the global RNG"
    out = capfd.readouterr()
    assert out.out == "", f"{name} printed {out.out!r}"
    assert xa.shape == x.shape and xa.dtype == x.dtype and not xa.requires_grad
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    if a.spec.bounded and tm == "L2":
        assert float((xa - x).flatten(1).norm(dim=1).max()) <= eps * (1 + 1e-4)
    elif a.spec.bounded:
        assert float((xa - x).abs().max()) <= eps + 1e-5


def test_torchattacks_random_start_follows_our_generator():
    import torchattacks  # noqa: F401 - the test extra installs it; a missing extra must fail, not skip
    m = make_linear_model(scale=0.2)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = m(x).argmax(1)
    a = get_attack("ta-pgd", threat_model="Linf", eps=8 / 255, steps=1)
    runs = []
    for global_seed, our_seed in ((1, 7), (2, 7), (1, 8)):
        with torch.random.fork_rng(devices=[]):  # vary the caller's global state without leaking it
            torch.manual_seed(global_seed)
            runs.append(a(m, x, y, generator=torch.Generator().manual_seed(our_seed)))
    assert torch.equal(runs[0], runs[1])        # the caller's global state does not matter
    assert not torch.equal(runs[0], runs[2])    # our generator does


# Budgets at which each torchattacks entry must visibly attack a linear model on 8x8 images.
_STRONG_OPTIONS = {"square": {"n_queries": 200}, "square-targeted": {"n_queries": 200},
                   "cw": {"steps": 30, "c": 10.0, "lr": 0.1}, "cw-targeted": {"steps": 30, "c": 10.0, "lr": 0.1}}


def _kl(logits_p, logits_q):
    return (logits_p.softmax(1) * (logits_p.log_softmax(1) - logits_q.log_softmax(1))).sum(1)


@pytest.mark.parametrize("name", sorted(n for n, s in ATTACKS.items() if s.backend == "torchattacks"))
def test_torchattacks_entries_attack(name):
    """Each entry does what its name says on a model where that is guaranteed (an identity attack, or
    one that ignores its target, fails): untargeted ones change every prediction, targeted ones
    lower the target's loss and reach it, TPGD moves the prediction away from the natural one."""
    import torchattacks  # noqa: F401 - the test extra installs it; a missing extra must fail, not skip
    m = make_linear_model(scale=0.2)
    with torch.no_grad():  # logits > 0: CW's f takes max over (1 - onehot) * logits; a shift changes no p(y|x)
        m.classifier[1].bias.fill_(50.0)
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = m(x).argmax(1)
    tm, eps = ("Linf", 0.3) if name == "tpgd" else ("L2", 3.0)
    a = get_attack(name, threat_model=tm, eps=eps, **_STRONG_OPTIONS.get(name, {"steps": 10}))
    t = choose_targets(m(x), y, "random", torch.Generator().manual_seed(0)) if a.needs_target else None
    xa = a(m, x, y, target=t, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        nat, adv = m(x), m(xa)
    pred = adv.argmax(1)
    if name == "tpgd":  # maximizes KL(p(.|x) || p(.|x')) (TRADES' attack): it need not flip labels
        assert bool((_kl(nat, adv) > 0.1).all()), _kl(nat, adv)
    elif not a.needs_target:  # untargeted, or picks its own targets (APGD-T, FAB-T)
        assert bool((pred != y).all()), f"{name} left predictions {pred.tolist()} == {y.tolist()}"
        assert bool((attack_loss(adv, y, "ce") > attack_loss(nat, y, "ce")).all())
    else:
        assert bool((attack_loss(adv, t, "ce") < attack_loss(nat, t, "ce")).all()), f"{name}: target loss did not fall"
        hit = float((pred == t).float().mean())
        if name == "fab-targeted":  # FAB stops at its first misclassification, often a third class
            margin = lambda lg: (lg.gather(1, t[:, None]) - lg.gather(1, y[:, None])).squeeze(1)  # noqa: E731
            assert bool((margin(adv) > margin(nat)).all()) and bool((pred != y).all()) and hit > 0
        else:
            assert hit >= 0.75, f"{name} reached the target on {hit:.0%} of the images"

"""Energy analysis of a robust and a standard classifier (Mirza et al. 2024, Sec. 3).

User story: "Do adversarial inputs have lower or higher energy than natural ones under my model, and
does adversarial training change that?" The script measures E(x) and E(x, y) on natural images and on
untargeted and targeted PGD versions of the same images, for

* ``ebmlens:cifar10-l2-small``     - the bundled L2-robust ResNetSmall (PGD-AT, eps 0.5), and
* ``ebmlens:cifar10-standard-small`` - the bundled non-robust ResNetSmall (plain cross-entropy,
  trained once with the command in its model card: ``ebmlens.models.bundled.model_card(...)``),

then prints each table and the direction of every gap. Run it from the repository root::

    python examples/energy_analysis.py --data cifar10:../shared/data/cifar10-jpeg.tar.xz --n 1000 --out report/

A quick smoke run: ``--n 20 --steps 1``. See docs/howto-energy-analysis.md for measured numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ebmlens
from ebmlens.analysis import energy_report
from ebmlens.data import default_cifar10_path


def direction(gap) -> str:
    """Words for a gap ``E(x) - E(x*)`` with its interval."""
    if gap.low > 0:
        return "lowers E(x)"
    if gap.high < 0:
        return "raises E(x)"
    return "no clear change in E(x)"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = default_cifar10_path()
    p.add_argument("--data", default=f"cifar10:{default_data}" if default_data else None,
                   help="data spec (default: the shared CIFAR-10 archive beside the checkout)")
    p.add_argument("--models", nargs="+", default=["ebmlens:cifar10-l2-small", "ebmlens:cifar10-standard-small"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threat-model", default="L2", choices=["L2", "Linf"])
    p.add_argument("--eps", type=float, default=0.5)
    p.add_argument("--out", default=None, help="folder for one sub-folder of report files per model")
    args = p.parse_args(argv)
    if args.data is None:
        p.error("--data is required (no CIFAR-10 archive found beside the checkout)")

    results = {}
    for spec in args.models:
        model = ebmlens.load_model(spec)
        geometry = ebmlens.attacks.Geometry.for_model(model, args.threat_model, args.eps)
        rep = energy_report(model, args.data, ["pgd", "pgd-targeted"], geometry=geometry, n=args.n, steps=args.steps)
        print(f"\n## {spec}\n")
        print(rep.table())
        for kind in ("pgd", "pgd-targeted"):
            k = rep[kind]
            print(f"- {kind}: mean E(x) {rep['natural'].energy.mean:.3f} -> {k.energy.mean:.3f}; "
                  f"the attack {direction(k.gap_energy)} (E(x) - E(x*) = {k.gap_energy})")
        if args.out:
            folder = Path(args.out) / spec.replace(":", "_")
            rep.to_json(folder / "report.json")
            rep.to_csv(folder / "table.csv")
            try:
                rep.plot(folder / "energies.png")
            except ImportError as e:
                print(f"(no plot: {e})")
        results[spec] = rep
    return results


if __name__ == "__main__":
    main()

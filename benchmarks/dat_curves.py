"""Issue 20: DAT's curves over training, from the trainer's ``intervals.json`` and ``select_steps.py``
results: the level ``T``, the per-interval AUC and BCE, clean / robust accuracy of the EMA, and the
FD of the DAT sampler on the selection split at the checkpoints measured.

A fine-tune that continues in a second run (``--init-from file:RUN1/epoch_001.pt``) is given as the
runs in order; its steps are counted on from the first run's last step.

    python benchmarks/dat_curves.py --runs runs/dat1 runs/dat2 \\
        --fd 0:fd_original.json 195:fd_dat1.json 585:fd_dat2.json --out docs/img/dat-curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ebmlens._io import save_figure


def chained(runs: list[Path]) -> list[dict]:
    """The rows of every run's ``intervals.json``, steps counted on across the runs (CIFAR-10's 50,000
    training images per epoch)."""
    rows: list[dict] = []
    offset = 0
    for run in runs:
        path = run / "intervals.json"
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: give finished or running ebmlens train --objective dat folders")
        mine = json.loads(path.read_text())
        rows += [{**r, "step": r["step"] + offset} for r in mine]
        cfg = json.loads((run / "config.json").read_text())  # the next run starts after this one's epochs
        offset += (int(cfg.get("max_train_images") or 50000) // int(cfg["batch_size"])) * int(cfg["epochs"])
    return rows


def fd_points(specs: list[str]) -> dict[str, list[tuple[int, float]]]:
    """``STEP:FILE`` of select_steps.py results: the chosen count's selection FD, by judge."""
    out: dict[str, list[tuple[int, float]]] = {}
    for spec in specs:
        step, _, path = spec.partition(":")
        res = json.loads(Path(path).read_text())
        out.setdefault(res["judge"], []).append((int(step), float(res["selection_fd"][str(res["chosen_steps"])])))
    return {k: sorted(v) for k, v in out.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, required=True)
    p.add_argument("--fd", nargs="*", default=[], help="STEP:select_steps.json (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="a .png")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = chained(a.runs)
    fds = fd_points(a.fd)
    step = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 4 if fds else 3, figsize=(16 if fds else 12, 3.2))
    ax[0].plot(step, [r["T"] for r in rows], drawstyle="steps-post")
    ax[0].set(title="level T", xlabel="step")
    ax[1].plot(step, [r["auc"] for r in rows], label="AUC (real vs negatives)")
    ax[1].plot(step, [r["bce"] for r in rows], label="BCE")
    ax[1].set(title="per-interval means", xlabel="step")
    ax[1].legend(fontsize=8)
    ax[2].plot(step, [r["clean_acc"] for r in rows], label="clean")
    ax[2].plot(step, [r["robust_acc"] for r in rows], label="PGD-L2")
    ax[2].set(title=f"EMA accuracy ({rows[0]['n']} test images)", xlabel="step")
    ax[2].legend(fontsize=8)
    for judge, pts in fds.items():
        ax[3].plot(*zip(*pts), marker="o", label=judge.split(":")[-1])
    if fds:
        ax[3].set(title="FD on the selection split", xlabel="step", yscale="log")
        ax[3].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, a.out)
    print(f"wrote {a.out} ({len(rows)} intervals, {sum(map(len, fds.values()))} FD points)")


if __name__ == "__main__":
    main()

"""Package a finished `ebmlens train` run as a bundled model (maintainers' tool, not installed).

    python tools/bundle_model.py runs/cifar10-l2-small cifar10-l2-small --card card.json
    python tools/bundle_model.py runs/dat cifar10-l2-small-dat --card card.json --stats-from cifar10-l2-small \
        --preset dat2025 --set steps=19            # a fine-tuned model: its base's statistics, its own preset

Writes ebmlens/models/bundled/NAME.safetensors (weights in float16; BatchNorm running statistics and
counters kept in their own dtype) and NAME.json (architecture, normalization, classes and the model
card). The card JSON holds the training command and the accuracies measured by `ebmlens accuracy`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BUNDLED = Path(__file__).resolve().parent.parent / "ebmlens" / "models" / "bundled"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished ebmlens train folder (model.safetensors + model.json)")
    ap.add_argument("name", help="bundled name, e.g. cifar10-l2-small")
    ap.add_argument("--card", type=Path, default=None, help="JSON with the model card fields")
    ap.add_argument("--fp32", action="store_true", help="keep float32 weights")
    ap.add_argument("--weights", type=Path, default=None,
                    help="the weights to bundle (default RUN/model.safetensors; e.g. RUN/epoch_002.pt)")
    ap.add_argument("--stats-from", default=None, help="a bundled model whose class statistics this one uses")
    ap.add_argument("--preset", default=None, help="the preset `ebmlens sample` runs for this model by default")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=INT",
                    help="an integer override of --preset (repeatable)")
    args = ap.parse_args()
    if args.weights is None or args.weights.suffix == ".safetensors":
        state = load_file(str(args.weights or args.run / "model.safetensors"))
    else:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)["state_dict"]
    meta = json.loads((args.run / "model.json").read_text())
    arch = meta["arch"]
    if arch.startswith("ebmlens:"):  # fine-tuned from a bundled model: its registered architecture
        arch = json.loads((BUNDLED / f"{arch[8:]}.json").read_text())["arch"]
    out_state = {}
    for k, v in state.items():
        keep = args.fp32 or not v.is_floating_point() or "running_" in k
        out_state[k] = v.contiguous() if keep else v.to(torch.float16).contiguous()
    BUNDLED.mkdir(parents=True, exist_ok=True)
    tmp = BUNDLED / f".{args.name}.safetensors.tmp"
    save_file(out_state, str(tmp))
    os.replace(tmp, BUNDLED / f"{args.name}.safetensors")
    card = json.loads(args.card.read_text()) if args.card else {}
    bundled_meta = {
        "name": args.name,
        "arch": arch,
        "num_classes": meta["num_classes"],
        "class_names": meta["class_names"],
        "mean": meta["mean"],
        "std": meta["std"],
        "input_shape": meta["input_shape"],
        "threat_model": meta.get("threat_model"),
        "eps": meta.get("eps"),
        "dataset": "cifar10",
        "weights_dtype": "float32" if args.fp32 else "float16",
        "training_config": meta.get("config", {}),
        "card": card,
    }
    if meta.get("base"):
        bundled_meta["base"] = meta["base"]
    if args.stats_from:
        bundled_meta["stats"] = args.stats_from
    if args.preset:
        sets = dict(kv.split("=", 1) for kv in args.overrides)
        bundled_meta["sampling"] = {"preset": args.preset, "set": {k: int(v) for k, v in sets.items()}}
    (BUNDLED / f"{args.name}.json").write_text(json.dumps(bundled_meta, indent=2) + "\n")
    print(f"wrote {BUNDLED / args.name}.safetensors and .json")


if __name__ == "__main__":
    main()

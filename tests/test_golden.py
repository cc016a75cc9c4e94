"""Every sample hash and report/metric number of the golden record (tests/golden/golden.json, taken
before the one-loop redesign) is unchanged. To see all differences: python tests/golden/make_golden.py --check"""

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).parent / "golden"


def _golden():
    spec = importlib.util.spec_from_file_location("ebmlens_make_golden", HERE / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_golden_record_unchanged(cifar_spec):
    g = _golden()
    diffs = g.compare(g.compute(cifar_spec), json.loads((HERE / "golden.json").read_text()))
    assert not diffs, "numbers changed against tests/golden/golden.json:\n" + "\n".join(diffs[:40])

"""energy_report streams: peak memory does not grow with n unless adversarial images are kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    from torch import nn
    from ebmlens.analysis import energy_report
    from ebmlens.data import ImageData
    from ebmlens.energy import EnergyModel

    torch.set_num_threads(1)  # a fresh process of its own: nothing of the test session changes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    model = EnergyModel(net, mean=(0.5,), std=(0.25,), input_shape=(3, 32, 32), num_classes=10)
    rs = np.random.default_rng(0)
    data = ImageData(rs.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8), np.arange(4096) % 10,
                     [str(i) for i in range(10)], "synthetic")

    def peak_mb():
        # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak through fork+exec
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    out = {}
    for label, n, keep in (("warm", 256, False), ("n256", 256, False), ("n4096", 4096, False), ("keep", 4096, True)):
        rep = energy_report(model, data, ["pgd", "pgd-targeted"], eps=0.5, threat_model="L2", n=n, steps=1,
                            batch_size=128, keep_adversarial=keep, n_boot=200)
        assert rep["natural"].n == n
        del rep
        out[label] = peak_mb()
    print(json.dumps(out))
""")


def test_peak_memory_flat_from_256_to_4096_images():
    # A fixed mmap threshold makes glibc return freed batch buffers to the OS; without it, heap
    # fragmentation from ~1.5 MB batch tensors raises peak RSS over time even with nothing alive.
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    r = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    peaks = json.loads(r.stdout.strip().splitlines()[-1])
    # 4096 adversarial images of two attacks would be 2 x 4096 x 3 x 32 x 32 x 4 bytes = 96 MiB
    grow = peaks["n4096"] - peaks["n256"]
    assert grow < 12.0, f"peak RSS grew by {grow:.1f} MiB from n=256 to n=4096: {peaks}"
    # and the measurement can see a leak: keeping the images does grow memory
    assert peaks["keep"] - peaks["n4096"] > 60.0, peaks

"""Starting Ray: a local run starts its own embedded Ray whatever cluster an earlier run left behind."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def test_local_ray_starts_even_when_a_dead_cluster_is_remembered():
    """`ray.init()` would try to join the cluster named in <ray temp dir>/ray_current_cluster and hang if it is gone.
    The child gets its own Ray temp dir (`RAY_TMPDIR`, short: Ray's socket paths must fit), so the machine's /tmp/ray
    and any Ray running beside the test are left alone."""
    tmp = Path(tempfile.mkdtemp(prefix="vlr", dir="/tmp"))
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # nothing listens there
        code = "from vlcorpus.runtime import init_ray; init_ray(num_cpus=1); import ray; print(ray.cluster_resources()['CPU'])"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp)}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "1.0"

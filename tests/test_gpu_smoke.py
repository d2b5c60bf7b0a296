"""benchmarks/gpu_smoke.py runs (tiny preset on CPU here; the 1b preset is for a lent GPU)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_smoke_script_runs_its_cpu_preset(tmp_path):
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "gpu_smoke.py"), "--preset", "tiny", "--device", "cpu",
           "--gen-length", "32", "--batch", "2", "--steps", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.load(open(out))
    assert set(result["sampler"]) == {"reference", "threshold_0.9", "dual_cache"}
    assert result["sampler"]["reference"]["forward_passes"] == 32
    assert [s["step"] for s in result["grpo_steps"]] == [1, 2]
    assert all(s["wall_s"] > 0 and s["rollout/forward_passes"] == 32 for s in result["grpo_steps"])

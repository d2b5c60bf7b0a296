"""benchmarks/gpu_first_look.py: every check runs on the CPU here (the device compared with itself), a check that
fails is recorded while the others run, and the GPU image's wheels are the ones the project needs."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_first_look.py")
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import gpu_first_look  # noqa: E402


@pytest.mark.slow
def test_every_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "look.json"
    cmd = [sys.executable, SCRIPT, "--device", "cpu", "--smoke-gen-length", "32", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = ("versions", "parity", "attention", "generator_handoff", "bad_token_id", "smoke")
    assert [report[c]["ok"] for c in checks] == [True] * len(checks), {
        c: report[c].get("error") for c in checks
    }
    # the device is the CPU on both sides: float32 logits and estimates are the same arithmetic
    assert report["parity"]["worst_fp32_diff"] == 0.0
    assert 0 < report["parity"]["llada_gqa"]["elbo_bf16_vs_fp32_max_abs_diff"] < 0.5  # bf16 moved something
    # the math kernel takes every mask with and without GQA, and agrees with float64 to bf16's precision
    for case, kernels in report["attention"]["accepted_by"].items():
        assert "math" in kernels, case
        assert report["attention"][f"math/{case}"]["max_abs_diff_vs_float64"] < 0.05
    assert report["generator_handoff"] == {**report["generator_handoff"], "tokens_equal": True,
                                           "state_after_equal": True, "generator_device": "cpu"}  # fmt: skip
    bad = report["bad_token_id"]
    assert bad["raw_forward"].startswith("IndexError")  # what the CPU does with the id; CUDA asserts instead
    assert re.fullmatch(
        r"prompt_ids hold 1 id\(s\) outside the vocabulary 0\.\.16 \(e\.g\. 17\); .*", bad["server_refusal"]
    )
    assert bad["served_after_refusal"] is True
    steps = report["smoke"]["grpo"]["steps"]
    assert len(steps) == 2 and all(s["wall_s"] > 0 and s["time/rollout_s"] > 0 for s in steps)
    assert report["smoke"]["sampler"]["reference"]["tokens_per_s"] > 0
    assert set(report["smoke"]["grpo"]["plan_peak_gib"]) >= {"rollout", "estimate", "policy step"}
    headline = gpu_first_look.figures(report)
    assert (
        headline["grpo_step_s"] == [round(s["wall_s"], 2) for s in steps] and headline["mfu"] is None
    )  # no CPU peak
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(headline))


def test_a_failing_check_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    def broken(device):
        raise RuntimeError("planted\nsecond line")

    monkeypatch.setattr(gpu_first_look, "parity", broken)
    out = tmp_path / "look.json"
    report = gpu_first_look.main(["--device", "cpu", "--skip", "smoke,bad_token_id", "--out", str(out)])
    assert report["parity"]["ok"] is False and report["parity"]["error"] == "RuntimeError: planted"
    assert report["attention"]["ok"] and report["generator_handoff"]["ok"]
    assert report["ok"] is False
    assert json.loads(out.read_text())["parity"]["error"] == "RuntimeError: planted"


def test_the_parity_check_sees_a_difference(monkeypatch):
    """A device whose arithmetic differs fails the check: here the moved copy of each model gets nudged weights."""
    import torch

    load = torch.nn.Module.load_state_dict

    def load_and_nudge(self, state, *args, **kwargs):
        result = load(self, state, *args, **kwargs)
        with torch.no_grad():
            next(self.parameters()).add_(1e-2)
        return result

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", load_and_nudge)
    result = gpu_first_look.parity("cpu")
    assert result["ok"] is False and result["worst_fp32_diff"] > 1e-3


def test_unknown_skip_is_one_line(capsys):
    with pytest.raises(SystemExit):
        gpu_first_look.main(["--skip", "smok", "--out", "/dev/null"])
    assert "--skip ['smok']: the checks are" in capsys.readouterr().err


def test_the_carried_wheels_cover_what_the_image_lacks():
    """Each library the project imports at run time is on the GPU image or in requirements/gpu-carry.txt (deepspeed
    aside: no wheel exists, and one GPU needs none), pinned to the version the CPU suite runs."""
    carried = {}
    with open(os.path.join(REPO, "requirements", "gpu-carry.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, version = line.strip().split("==")
                carried[name.lower().replace("_", "-")] = version
    with open(os.path.join(REPO, "requirements", "gpu-image.txt")) as f:
        image = {ln.strip().split("==")[0].lower() for ln in f if ln.strip() and not ln.startswith("#")}
    needed = {"trl", "peft", "datasets", "math-verify", "torch", "transformers", "accelerate", "tokenizers",
              "safetensors", "pyyaml", "matplotlib"}  # fmt: skip
    assert needed <= set(carried) | image, needed - set(carried) - image
    pins = {}
    with open(os.path.join(REPO, "requirements", "constraints.txt")) as f:
        for line in f:
            if "==" in line:
                name, version = line.strip().split("==")
                pins[name.lower().replace("_", "-")] = version
    for name in ("trl", "peft", "datasets", "math-verify", "latex2sympy2-extended"):
        assert carried[name] == pins[name], name

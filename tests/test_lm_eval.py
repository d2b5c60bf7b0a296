"""lm-eval-harness drives a checkpoint through its own evaluator: the ``dllm_align`` model, registered in
lm-eval's registry, on a local task of the tiny model's held-out sums."""

import json
import os

import pytest

lm_eval = pytest.importorskip("lm_eval")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "recipes", "tiny", "model")
TEST = os.path.join(REPO, "recipes", "tiny", "data", "test.jsonl")
TASK = f"""task: tiny_add
dataset_path: json
dataset_kwargs:
  data_files:
    test: {TEST}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["</answer>"]
filter_list:
  - name: digits
    filter:
      - function: regex
        regex_pattern: "(\\\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def test_lm_evals_own_evaluator_runs_a_local_task_through_the_project_sampler(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    import align.lm_eval  # noqa: F401 - registers dllm_align
    from align.eval.runner import DiffusionSource, process_state
    from align.eval.tasks import PROTOCOLS

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "tiny_add.yaml").write_text(TASK)
    out = lm_eval.simple_evaluate(model="dllm_align", tasks=["tiny_add"], limit=16, log_samples=True,
                                  model_args=f"pretrained={MODEL},protocol=tiny,dtype=float32,device=cpu",
                                  task_manager=TaskManager(include_path=str(tmp_path)))  # fmt: skip
    samples = out["samples"]["tiny_add"]
    responses = [s["resps"][0][0] for s in samples]
    rows = [json.loads(line) for line in open(TEST)][:16]
    source = DiffusionSource.load(MODEL, dtype="float32", device="cpu", state=process_state("cpu"))
    ours = source.complete([r["question"] for r in rows],
                           PROTOCOLS["tiny"].with_overrides(stop_strings=("</answer>",)))  # fmt: skip
    assert responses == ours and all(r.startswith("<answer>") and "</answer>" not in r for r in responses)
    right = [r.removeprefix("<answer>") == row["answer"] for r, row in zip(responses, rows)]
    assert out["results"]["tiny_add"]["exact_match,digits"] == pytest.approx(sum(right) / 16)
    assert 0 < sum(right) < 16  # the half-trained tiny model: neither all right nor all wrong


def test_loglikelihood_is_the_elbo_and_prefers_the_right_sum():
    from lm_eval.api.instance import Instance

    from align.lm_eval import DllmAlignLM

    lm = DllmAlignLM(MODEL, protocol="tiny", dtype="float32", device="cpu", mc_num=16)
    rows = [json.loads(line) for line in open(TEST)][:6]
    requests = [Instance("loglikelihood", {}, (r["question"], f"<answer>{a}</answer>"), 0)
                for r in rows for a in (r["answer"], str(int(r["answer"]) + 111))]  # fmt: skip
    scores = lm.loglikelihood(requests)
    right, wrong = scores[0::2], scores[1::2]
    assert all(g is False for _, g in scores) and all(v < 0 for v, _ in scores)
    assert sum(r > w for (r, _), (w, _) in zip(right, wrong)) >= 5
    assert lm.loglikelihood(requests[:2]) == scores[:2]  # seeded: the same masks each call


def test_lm_evals_own_command_line_with_the_model_registered(tmp_path):
    """``python -m align.lm_eval run --model dllm_align ...`` is lm-eval's CLI: its results file, its metric."""
    import subprocess
    import sys

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_add.yaml").write_text(TASK)
    cmd = [sys.executable, "-m", "align.lm_eval", "run", "--model", "dllm_align", "--model_args",
           f"pretrained={MODEL},protocol=tiny,dtype=float32", "--device", "cpu", "--tasks", "tiny_add",
           "--include_path", str(tmp_path / "tasks"), "--limit", "8", "--output_path", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    [result] = list((tmp_path / "out").rglob("results_*.json"))
    metrics = json.load(open(result))["results"]["tiny_add"]
    assert (
        0.0 <= metrics["exact_match,digits"] <= 1.0
        and json.load(open(result))["config"]["model"] == "dllm_align"
    )

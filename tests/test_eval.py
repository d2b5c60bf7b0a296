"""align eval / align report: scoring on written fixtures, the endpoint path, pass@k, a tiny checkpoint, plots."""

import itertools
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from align.cli import main
from align.eval import PROTOCOLS, TASKS, evaluate_task, pass_at_k
from align.eval.report import load_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GSM8K = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "What is 6 times 7?", "answer": "6 * 7 = 42\n#### 42"},
    {"question": "Half of 1,000?", "answer": "#### 500"},
]
MATH500 = [
    {"problem": "Compute 1/2 + 1/4.", "answer": "\\frac{3}{4}"},
    {"problem": "Solve x^2 = 4 for x > 0.", "answer": "2"},
]
HUMANEVAL = [
    {"prompt": 'def add(a, b):\n    """Return a + b."""\n', "entry_point": "add",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"},
    {"prompt": 'def neg(a):\n    """Return -a."""\n', "entry_point": "neg",
     "test": "def check(candidate):\n    assert candidate(2) == -2\n"},
]  # fmt: skip
MBPP = [
    {
        "prompt": "Write a function square(x) returning x squared.",
        "test_list": ["assert square(3) == 9", "assert square(0) == 0"],
    },
    {"prompt": "Write a function is_even(n).", "test_list": ["assert is_even(2)", "assert not is_even(3)"]},
]
# Canned replies keyed by a fragment of the question; the comment says what each deserves.
REPLIES = {
    "Tom has": "<reasoning>3+4</reasoning>\n<answer>7</answer>",  # right
    "6 times 7": "The answer is 41.",  # wrong
    "Half of": "\\boxed{500}",  # right
    "1/2 + 1/4": "So the sum is \\boxed{\\dfrac{3}{4}}.",  # right (equivalent form)
    "x^2 = 4": "\\boxed{-2}",  # wrong
    "def add": "```python\ndef add(a, b):\n    return a + b\n```",  # passes
    "def neg": "```python\ndef neg(a):\n    return a\n```",  # fails
    "square(x)": "```python\ndef square(x):\n    return x * x\n```",  # 2/2 tests
    "is_even": "```python\ndef is_even(n):\n    return True\n```",  # 1/2 tests: not a pass
}
EXPECTED = {"gsm8k": ("accuracy", 2 / 3), "math500": ("accuracy", 0.5), "humaneval": ("pass@1", 0.5),
            "mbpp": ("pass@1", 0.5)}  # fmt: skip


def reply_for(text: str) -> str:
    return next(v for k, v in REPLIES.items() if k in text)


@pytest.fixture
def data_dir(tmp_path):
    for name, rows in (("gsm8k", GSM8K), ("math500", MATH500), ("humaneval", HUMANEVAL), ("mbpp", MBPP)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


class Scripted:
    """A completion source that answers from a list of replies per question (cycled per sample)."""

    description = {"source": "scripted"}

    def __init__(self, replies=None):
        self.replies = replies
        self.calls = itertools.count()

    def complete(self, messages, protocol, offset=0):
        if self.replies is None:
            return [reply_for(m) for m in messages]
        return [self.replies[next(self.calls) % len(self.replies)] for _ in messages]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_scoring_against_written_fixtures(data_dir, name):
    task = TASKS[name]
    metrics, samples = evaluate_task(Scripted(), task, task.load(str(data_dir)), PROTOCOLS["d1"])
    metric, value = EXPECTED[name]
    assert metrics[metric] == pytest.approx(value) and metrics["n"] == len(samples)
    assert all(s["score"] in (0.0, 0.5, 1.0) for s in samples)


def test_pass_at_k_matches_enumeration():
    for n, c, k in [(5, 2, 1), (5, 2, 3), (6, 0, 2), (4, 4, 2), (7, 3, 7)]:
        subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_from_several_samples(data_dir):
    good, bad = REPLIES["def add"], "```python\ndef add(a, b):\n    return a - b\n```"
    task = TASKS["humaneval"]
    rows = task.load(str(data_dir))[:1]
    metrics, samples = evaluate_task(Scripted([good, bad, bad]), task, rows, PROTOCOLS["d1"], num_samples=3)
    assert [s["score"] for s in samples] == [1.0, 0.0, 0.0]
    assert metrics["pass@1"] == pytest.approx(1 / 3) and metrics["pass@3"] == 1.0


CUSTOM_CODE = [  # the three test forms code_execution reads, one per row
    {"prompt": "Write square(x).", "tests": ["assert square(3) == 9", "assert square(0) == 0"]},
    {"prompt": "Write add(a, b).", "entry_point": "add", "tests": "def check(candidate):\n    assert candidate(2, 3) == five()\n",
     "test_helpers": "def five():\n    return 5\n"},  # trusted code the tests call (HumanEval's prompt helpers)
    {"prompt": "Print the sum of two numbers read from stdin.", "tests": [{"input": "2 3\n", "output": "5\n"}]},
]  # fmt: skip
CUSTOM_REPLIES = {
    "square": "```python\ndef square(x):\n    return x * x\n```",
    "add": "```python\ndef add(a, b):\n    return a + b\n```",
    "stdin": "```python\nprint(sum(map(int, input().split())))\n```",
}


def test_a_custom_code_task_is_scored_in_the_sandbox_with_pass_at_k(tmp_path):
    """NAME=file.jsonl whose rows carry code_execution's columns (after --rename-columns) is a code task:
    pass@1 through the sandbox for asserts, a check(candidate) program with its helpers and stdin/stdout cases;
    pass@k with several samples; a row whose tests are malformed is one line at load, naming the row."""
    from align.eval.tasks import load_tasks

    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": r.pop("prompt"), **r}) + "\n" for r in CUSTOM_CODE))
    [(task, rows)] = load_tasks(f"mine={path}", rename=["text:question"])
    assert (task.kind, task.metric, len(rows)) == ("code", "pass@1", 3)

    class Replies(Scripted):
        def complete(self, messages, protocol, offset=0):
            return [next(v for k, v in CUSTOM_REPLIES.items() if k in m) for m in messages]

    metrics, samples = evaluate_task(Replies(), task, rows, PROTOCOLS["d1"])
    assert [s["score"] for s in samples] == [1.0, 1.0, 1.0] and metrics["pass@1"] == 1.0
    wrong = "```python\ndef square(x):\n    return x + 1\n```"
    metrics, samples = evaluate_task(Scripted([CUSTOM_REPLIES["square"], wrong]), task, rows[:1], PROTOCOLS["d1"],
                                     num_samples=2)  # fmt: skip
    assert (
        [s["score"] for s in samples] == [1.0, 0.0] and metrics["pass@1"] == 0.5 and metrics["pass@2"] == 1.0
    )
    for bad, message in (
        ({"question": "q", "tests": "def check(candidate):\n    pass\n"}, "row 1: code tests: a check\\(candidate\\) program needs the column 'entry_point'"),
        ({"question": "q", "tests": []}, "row 1: code tests: expected asserts"),
        ({"question": "q", "tests": ["assert f(1) ==="]}, "row 1: code_execution: the row's test 0 does not compile"),
    ):  # fmt: skip
        path.write_text(
            json.dumps({"question": "q", "tests": ["assert True"]}) + "\n" + json.dumps(bad) + "\n"
        )
        with pytest.raises(ValueError, match=f"^task mine, {message}"):
            load_tasks(f"mine={path}")


class _Server(BaseHTTPRequestHandler):
    seen: list = []
    probes = 0
    failing = ""  # questions containing this get HTTP 500

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or body.get("model") != "qwen-test":
            self.send_response(404)
            self.end_headers()
            return
        user = body["messages"][-1]["content"]
        if body.get("max_tokens") == 1:  # align eval's probe before the work: its first question, 1 token
            _Server.probes += 1
        elif _Server.failing and _Server.failing in user:
            self.send_response(500)
            self.end_headers()
            return
        else:
            _Server.seen.append(user)
        payload = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": reply_for(user)}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_endpoint_path_against_a_local_server(data_dir, tmp_path, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Server.seen, _Server.probes = [], 0
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        argv = ["eval", "--endpoint", url, "--served-model", "qwen-test", "--tasks", "gsm8k,math500,humaneval,mbpp",
                "--data-dir", str(data_dir), "--output", str(tmp_path / "ar"), "--concurrency", "3"]  # fmt: skip
        assert main(argv) == 0
    finally:
        server.shutdown()
    questions = (
        [r["question"] for r in GSM8K]
        + [r["problem"] for r in MATH500]
        + [r["prompt"] for r in HUMANEVAL + MBPP]
    )
    assert _Server.probes == 1
    assert len(_Server.seen) == len(questions) and all(any(q in s for s in _Server.seen) for q in questions)
    results = json.load(open(tmp_path / "ar" / "results.json"))
    for name, (metric, value) in EXPECTED.items():
        assert results["tasks"][name][metric] == pytest.approx(value)
    assert results["config"]["protocol"]["name"] == "d1" and results["config"]["protocol"]["steps"] == 128
    lines = [json.loads(x) for x in open(tmp_path / "ar" / "gsm8k" / "samples.jsonl")]
    assert [x["extracted"] for x in lines] == ["7", "41", "500"]


def test_a_later_failure_keeps_finished_tasks_and_a_rerun_skips_them(data_dir, tmp_path, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Server.seen, _Server.probes, _Server.failing = [], 0, "Solve x^2"
    out = tmp_path / "ar"
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    argv = ["eval", "--endpoint", url, "--served-model", "qwen-test", "--tasks", "gsm8k,math500", "--data-dir",
            str(data_dir), "--output", str(out), "--retries", "0", "--concurrency", "1"]  # fmt: skip
    try:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert (
            "align eval: endpoint " in err
            and "request failed 1 time(s) (HTTP 500" in err
            and "Traceback" not in err
        )
        results = json.load(open(out / "results.json"))
        assert list(results["tasks"]) == ["gsm8k"] and results["tasks"]["gsm8k"]["accuracy"] == pytest.approx(
            2 / 3
        )
        assert len(open(out / "gsm8k" / "samples.jsonl").readlines()) == 3
        _Server.seen, _Server.failing = [], ""
        assert main(argv) == 0
        assert "gsm8k is already complete in" in capsys.readouterr().err
        assert len(_Server.seen) == 2 and all("Compute" in q or "Solve" in q for q in _Server.seen)
        results = json.load(open(out / "results.json"))
        assert results["tasks"]["math500"]["accuracy"] == pytest.approx(0.5)
        # other settings into the same folder are refused, not mixed; --overwrite reruns everything
        assert main([*argv, "--gen-length", "64"]) == 2
        assert capsys.readouterr().err == (
            f"align eval: {out} holds results made with other settings (protocol.gen_length 256 -> 64, "
            "protocol.steps 128 -> 32); pass --overwrite to replace them or choose another --output.\n"
        )
        _Server.seen = []
        assert main([*argv, "--gen-length", "64", "--overwrite"]) == 0 and len(_Server.seen) == 5
    finally:
        server.shutdown()


class _Engine(BaseHTTPRequestHandler):
    """An OpenAI-style server that answers both routes, says what it is, and refuses like vLLM does."""

    requests: list = []
    refuse = ""  # a prompt containing this gets vLLM's 400 with its JSON error body

    def _send(self, code: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/version":
            return self._send(200, {"version": "9.9.9"})
        return self._send(200, {"data": [{"id": "ar", "owned_by": "vllm"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Engine.requests.append((self.path, body))
        text = body.get("prompt") or body["messages"][-1]["content"]
        if _Engine.refuse and _Engine.refuse in text:
            return self._send(400, {"error": {"message": "The decoder prompt cannot be empty", "type": "BadRequestError",
                                              "code": 400}})  # fmt: skip
        reply = reply_for(text) + f" seed={body['seed']}"
        choice = {"text": reply} if self.path == "/v1/completions" else {"message": {"content": reply}}
        return self._send(200, {"choices": [choice]})

    def log_message(self, *args):
        pass


@pytest.fixture
def engine():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Engine.requests, _Engine.refuse = [], ""
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_endpoint_completion_route_per_request_seeds_and_provenance(engine, data_dir, tmp_path):
    """``use_chat_template: false`` posts /v1/completions with the raw prompt; the samples of one question
    carry different seeds (seed + answer index); results.json records what served them, not compared."""
    out = tmp_path / "ar"
    argv = ["eval", "--endpoint", engine, "--served-model", "ar", "--tasks", "gsm8k", "--data-dir", str(data_dir),
            "--output", str(out), "--no-chat-template", "--temperature", "1", "--num-samples", "2", "--seed", "5",
            "--system-prompt", "Be brief."]  # fmt: skip
    assert main(argv) == 0
    paths = {path for path, _ in _Engine.requests}
    assert paths == {"/v1/completions"}
    probe, *work = [body for _, body in _Engine.requests]
    assert probe["max_tokens"] == 1 and probe["prompt"] == "Be brief.\n" + GSM8K[0]["question"]
    assert sorted(b["seed"] for b in work) == list(range(5, 5 + 2 * len(GSM8K)))
    samples = [json.loads(x) for x in open(out / "gsm8k" / "samples.jsonl")]
    assert samples[0]["completion"] != samples[1]["completion"]  # the two samples of question 0 differ
    results = json.load(open(out / "results.json"))
    (record,) = results["provenance"]
    assert (
        record["engine"] == "vllm" and record["engine_version"] == "9.9.9" and "torch" in record["packages"]
    )
    assert "provenance" not in results["config"]
    assert main(argv) == 0  # a rerun finds the task done, whatever the provenance, and adds its own record
    assert len(json.load(open(out / "results.json"))["provenance"]) == 2


def test_a_refused_request_shows_the_servers_message_in_one_line(engine, data_dir, tmp_path, capsys):
    _Engine.refuse = "Tom has"  # the first question: the probe itself is refused
    argv = ["eval", "--endpoint", engine, "--served-model", "ar", "--tasks", "gsm8k", "--data-dir", str(data_dir),
            "--output", str(tmp_path / "ar")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == (f"align eval: endpoint {engine}/chat/completions did not answer a 1-token request for model 'ar' "
                   "(HTTP 400 Bad Request: The decoder prompt cannot be empty); check --endpoint and --served-model "
                   "(the server's /v1/models lists its names).\n")  # fmt: skip
    _Engine.refuse, _Engine.requests = "6 times 7", []  # mid-eval: a 4xx is not asked again
    assert main([*argv, "--retries", "3"]) == 1
    err = capsys.readouterr().err
    assert "request failed 1 time(s) (HTTP 400 Bad Request: The decoder prompt cannot be empty)" in err
    lines = [line for line in err.split("\n") if "align eval:" in line]
    assert len(lines) == 1 and "Traceback" not in err
    # the refused request was sent once (not retried); no request twice. (The question after it may never be
    # sent: the failure cancels requests whose worker thread had not started yet, which load decides.)
    sent = [json.dumps(body["messages"]) for _, body in _Engine.requests[1:]]
    assert sum("6 times 7" in m for m in sent) == 1 and len(set(sent)) == len(sent) <= len(GSM8K)


def test_progress_shows_the_running_metric(data_dir, capsys):
    task = TASKS["gsm8k"]
    evaluate_task(Scripted(), task, task.load(str(data_dir)), PROTOCOLS["d1"])
    err = capsys.readouterr().err
    assert "gsm8k: 100%" in err and "3/3" in err and "accuracy=0.667" in err and "req/s=" in err


def test_endpoint_that_refuses_gives_a_clear_error(data_dir, tmp_path, capsys, monkeypatch):
    argv = ["eval", "--endpoint", "http://127.0.0.1:9/v1", "--served-model", "m", "--tasks", "gsm8k", "--data-dir",
            str(data_dir), "--output", str(tmp_path / "x")]  # fmt: skip
    import urllib.request

    opened = []
    real_urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda r, **kw: opened.append(r) or real_urlopen(r, **kw))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("align eval: endpoint http://127.0.0.1:9/v1/chat/completions did not answer a 1-token "
                          "request for model 'm' (") and "Traceback" not in err and err.count("\n") == 1  # fmt: skip
    assert len(opened) == 1  # one probe, no retries with back-off
    assert not (tmp_path / "x").exists()  # nothing written before the source answered


def test_tiny_checkpoint_end_to_end(tmp_path, capsys):
    model = os.path.join(REPO, "recipes", "tiny", "model")
    test = os.path.join(REPO, "recipes", "tiny", "data", "test.jsonl")
    argv = ["eval", "--model", model, "--tasks", f"tiny={test}", "--protocol", "tiny", "--limit", "40",
            "--output", str(tmp_path / "e"), "--dtype", "float32", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    results = json.load(open(tmp_path / "e" / "results.json"))
    samples = [json.loads(x) for x in open(tmp_path / "e" / "tiny" / "samples.jsonl")]
    gold = [json.loads(x)["answer"] for x in open(test)][:40]
    assert results["tasks"]["tiny"]["n"] == 40 == len(samples)
    assert [s["score"] for s in samples] == [float(s["extracted"] == g) for s, g in zip(samples, gold)]
    assert results["tasks"]["tiny"]["accuracy"] == pytest.approx(sum(s["score"] for s in samples) / 40)
    assert 0.0 < results["tasks"]["tiny"]["accuracy"] < 1.0  # the committed model is middling by design
    # the same greedy decode through `align generate` gives the same first completion
    capsys.readouterr()
    assert main(["generate", "--model", model, "--prompt", samples[0]["prompt"], "--protocol", "tiny", "--dtype",
                 "float32", "--device", "cpu"]) == 0  # fmt: skip
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith('{"prompt"'))
    assert json.loads(line)["completion"] == samples[0]["completion"]


def test_report_with_tables_intervals_and_plots(tmp_path):
    from align.eval.report import wilson

    def run(folder, acc, n, length=256, model="base", adapter=None):
        os.makedirs(tmp_path / folder)
        results = {"tasks": {"gsm8k": {"accuracy": acc, "n": n, "num_samples": 1}},
                   "config": {"source": {"model": model, "adapter": adapter},
                              "protocol": {"name": "d1", "gen_length": length, "steps": length // 2}}}  # fmt: skip
        if folder == "lora256":  # a folder with provenance records (the newest is shown)
            results["provenance"] = [{"engine": "vllm", "engine_version": "0.1"},
                                     {"engine": "dllm-align sampler", "device": "cuda:0 (NVIDIA H100)"}]  # fmt: skip
        (tmp_path / folder / "results.json").write_text(json.dumps(results))
        return str(tmp_path / folder)

    folders = [run("base128", 0.5, 10, 128), run("base256", 0.6, 10), run("lora256", 0.7, 40, adapter="out/lora"),
               run("lora128", 0.65, 40, 128, adapter="out/lora"), run("perfect", 1.0, 500)]  # fmt: skip
    assert (
        main(
            [
                "report",
                *folders[:2],
                f"RL={folders[2]}",
                f"RL128={folders[3]}",
                f"AR={folders[4]}",  # 100%: its Wilson upper bound rounds below 1.0, the bar must still draw
                "--output",
                str(tmp_path / "rep"),
            ]
        )
        == 0
    )
    text = open(tmp_path / "rep" / "report.md").read()
    lo, hi = wilson(0.6, 10)
    assert f"| base256 | base | - | ? | d1 | 256 | 60.0 [{100 * lo:.1f}, {100 * hi:.1f}] | 10 |" in text
    assert "| RL | base | out/lora | dllm-align sampler, cuda:0 (NVIDIA H100) | d1 | 256 | 70.0 [" in text
    assert "different numbers of questions (n = 10, 40, 500)" in text
    for png in ("gsm8k.png", "gsm8k_by_length.png"):
        assert open(tmp_path / "rep" / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_run(str(tmp_path))


def test_report_series_intervals_and_training_curves(tmp_path):
    from align.eval import report

    # wilson against a hand computation; the bootstrap interval holds the estimate and narrows with n
    lo, hi = report.wilson(0.5, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    small = report.bootstrap_pass_at_k([1, 0, 2, 0], 2, 1)
    large = report.bootstrap_pass_at_k([1, 0, 2, 0] * 25, 2, 1)
    assert small[0] <= 0.375 <= small[1] and large[1] - large[0] < small[1] - small[0]
    # series: runs differing only in length join; a LoRA run of the same base is its own series
    runs = [{"label": lab, "kind": "eval", "folder": "-", "tasks": {"t": {"accuracy": 0.5, "n": 4}},
             "config": {"source": {"model": "m", "adapter": ad}, "protocol": {"name": "d1", "gen_length": g}}}
            for lab, ad, g in [("base-128", None, 128), ("base-256", None, 256), ("rl-128", "a", 128),
                               ("rl-256", "a", 256)]]  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert report._length_plot(plt, "t", runs, "accuracy", str(tmp_path)) == [
        "![t by length](t_by_length.png)",
        "",
    ]
    assert report._series_name(["base-128", "base-256"]) == "base" and report._series_name(["x"]) == "x"
    # a training output_dir: curves from trainer_state.json (or the newest checkpoint's)
    history = [{"step": s, "reward": 0.1 * s, "rewards/math_accuracy/mean": 0.1 * s, "rewards/fmt/mean": 0.5,
                "kl": 0.01 * s, "completions/mean_length": 8.0, "rollout/tokens_per_s": 100.0} for s in (1, 2, 3)]  # fmt: skip
    history.append({"step": 3, "eval_tiny/accuracy": 0.4, "eval_tiny/n": 10, "eval_tiny/loop_rate": 0.1,
                    "eval_tiny/unclosed_think_rate": 0.0})  # fmt: skip
    os.makedirs(tmp_path / "grpo" / "checkpoint-3")
    (tmp_path / "grpo" / "checkpoint-3" / "trainer_state.json").write_text(
        json.dumps({"log_history": history})
    )
    assert main(["report", f"GRPO={tmp_path / 'grpo'}", "--output", str(tmp_path / "rep")]) == 0
    text = open(tmp_path / "rep" / "report.md").read()
    assert "| GRPO | 3 | 0.100 -> 0.300 |" in text and "![training curves](training.png)" in text
    assert open(tmp_path / "rep" / "training.png", "rb").read(4) == b"\x89PNG"
    run = report.load_run(str(tmp_path / "grpo"))
    assert [(p, x) for p, _, x, _ in report.training_panels([run])] == [
        ("reward", "step"), ("rewards/*/mean", "step"), ("kl", "step"), ("completions/mean_length", "step"),
        ("rollout/tokens_per_s", "step"), ("eval_*", "step"),
    ]  # fmt: skip
    [held_out] = [keys for p, _, _, keys in report.training_panels([run]) if p == "eval_*"]
    assert list(held_out) == ["eval_tiny/accuracy"]  # the count and the loop rates are not score curves
    # with wall_s logged, held-out scores are also drawn against training time; seeds sharing a label are
    # drawn as their mean per step with a min-max band
    timed = [dict(h, wall_s=2.0 * h["step"]) for h in history]
    other = [dict(h, wall_s=4.0 * h["step"], **({"eval_tiny/accuracy": 0.6} if "eval_tiny/accuracy" in h else {}))
             for h in history]  # fmt: skip
    seeds = [{"label": "GRPO", "kind": "train", "history": h} for h in (timed, other)]
    assert ("eval_*", "wall_s") in [(p, x) for p, _, x, _ in report.training_panels(seeds)]
    assert report._mean_curve(seeds, "eval_tiny/accuracy", "wall_s") == ([9.0], [0.5], [0.4], [0.6])
    assert report._mean_curve(seeds, "reward", "step")[0] == [1, 2, 3]
    text = report.write_report(seeds, str(tmp_path / "rep2"))
    assert open(text).read().count("| GRPO | 3 |") == 2


def test_eval_input_errors_are_one_line_before_anything_loads(data_dir, tmp_path, capsys):
    tiny = os.path.join(REPO, "recipes", "tiny", "model")
    base = ["--data-dir", str(data_dir), "--output", str(tmp_path / "o")]
    cases = [
        (["--model", tiny, "--tasks", "gsm8k", "--num-samples", "4"],
         "align eval: --num-samples > 1 needs sampling; set --temperature > 0 (greedy repeats itself)."),
        (["--model", tiny, "--tasks", "gsm8k", "--protocol", "nope"],
         "align eval: unknown protocol 'nope'; choose from ['d1', 'diffucoder', 'dream', 'illada', 'llada', 'llada-1.5-opencompass', 'llada-fast', 'llada-opencompass', 'tiny', 'tiny-block', 'trado']."),
        (["--model", tiny, "--tasks", "gsm9k"],
         "align eval: unknown task 'gsm9k': use one of ['countdown', 'gsm8k', 'humaneval', 'math500', 'mbpp', 'sudoku'] or "
         "NAME=path/to/file.jsonl."),
        (["--model", "/no/such/path", "--tasks", "gsm8k"],
         "align eval: --model /no/such/path does not exist; give a local checkpoint folder or a hub id (org/name)."),
        (["--model", tiny, "--tasks", "gsm8k", "--data-dir", str(tmp_path / "empty")],
         f"align eval: task gsm8k: {tmp_path / 'empty' / 'gsm8k.jsonl'} does not exist (expected JSONL rows)."),
        (["--endpoint", "http://127.0.0.1:9", "--tasks", "gsm8k"],
         "align eval: --endpoint needs --served-model (the name the server knows the model by)."),
    ]  # fmt: skip
    for argv, line in cases:
        assert main(["eval", *base, *argv]) == 2, argv
        assert capsys.readouterr().err == line + "\n"
    # the case: the tiny task would finish, then gsm8k would fail: now found before the model loads
    test = os.path.join(REPO, "recipes", "tiny", "data", "test.jsonl")
    argv = ["eval", "--model", tiny, "--tasks", f"tiny={test},gsm8k", "--data-dir", str(tmp_path / "empty"),
            "--protocol", "tiny", "--output", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2 and "gsm8k.jsonl does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "gsm8k.jsonl").write_text(json.dumps({"q": "1+1", "answer": "2"}) + "\n")
    assert (
        main(
            [
                "eval",
                "--model",
                tiny,
                "--tasks",
                "gsm8k",
                "--data-dir",
                str(tmp_path / "bad"),
                "--output",
                "o",
            ]
        )
        == 2
    )
    assert "rows lack column(s) ['question']; they have ['answer', 'q']" in capsys.readouterr().err
    with pytest.raises(ValueError):  # --debug shows the traceback instead
        main(["eval", "--model", tiny, "--tasks", "gsm9k", "--output", "o", "--debug"])


@pytest.mark.slow
def test_data_parallel_eval_matches_one_process(tmp_path):
    import subprocess
    import sys

    test = os.path.join(REPO, "recipes", "tiny", "data", "test.jsonl")
    common = ["eval", "--model", os.path.join(REPO, "recipes", "tiny", "model"), "--tasks", f"tiny={test}",
              "--protocol", "tiny", "--limit", "21", "--dtype", "float32"]  # fmt: skip
    assert main([*common, "--output", str(tmp_path / "one")]) == 0
    from test_trainer import free_port

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--mixed_precision", "no", "--main_process_port", free_port(), "-m", "align.cli", *common, "--output",
              str(tmp_path / "two")]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    lines = [x for x in proc.stderr.splitlines() if "Loading weights" not in x and "it/s]" not in x]
    assert proc.returncode == 0, "\n".join(lines[:40] + ["..."] + lines[-20:])  # both ranks' own words first
    one, two = (json.load(open(tmp_path / d / "results.json")) for d in ("one", "two"))
    assert two["config"]["source"]["processes"] == 2
    assert one["tasks"] == two["tasks"]
    rows = [[json.loads(x) for x in open(tmp_path / d / "tiny" / "samples.jsonl")] for d in ("one", "two")]
    assert rows[0] == rows[1] and len(rows[0]) == 21
    # the same launch again: every task is already complete, nothing loads, both processes end cleanly
    again = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert again.returncode == 0 and again.stderr.count("tiny is already complete") == 1, again.stderr[-2000:]


@pytest.mark.slow
def test_killed_eval_continues_where_it_stopped(tmp_path, capsys):
    import signal
    import subprocess
    import sys

    test = os.path.join(REPO, "recipes", "tiny", "data", "test.jsonl")
    common = ["eval", "--model", os.path.join(REPO, "recipes", "tiny", "model"), "--tasks", f"tiny={test}",
              "--protocol", "tiny", "--limit", "120", "--dtype", "float32", "--batch-size", "4"]  # fmt: skip
    assert main([*common, "--output", str(tmp_path / "whole")]) == 0
    samples = tmp_path / "cut" / "tiny" / "samples.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "align.cli", *common, "--output", str(tmp_path / "cut")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and len(samples.read_text().splitlines()) >= 12:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    kept = len([x for x in samples.read_text().splitlines() if x.endswith("}")])
    assert proc.returncode == -signal.SIGKILL and 12 <= kept < 120
    assert "tiny" not in json.load(open(tmp_path / "cut" / "results.json"))["tasks"]
    capsys.readouterr()
    assert main([*common, "--output", str(tmp_path / "cut")]) == 0
    assert f"continuing after {kept} of 120 answers" in capsys.readouterr().err
    whole, cut = (
        [json.loads(x) for x in open(tmp_path / d / "tiny" / "samples.jsonl")] for d in ("whole", "cut")
    )
    assert cut == whole
    assert (
        json.load(open(tmp_path / "cut" / "results.json"))["tasks"]
        == json.load(open(tmp_path / "whole" / "results.json"))["tasks"]
    )


@pytest.mark.slow
def test_humaneval_function_only_replies_get_the_prompts_imports_and_helpers():
    """Chat models restate the function alone; all 164 canonical solutions sent so must pass."""
    import ast

    from rewards import benchdata
    from rewards.code import prompt_context

    rows = benchdata.load("humaneval")
    replies = []
    for row in rows:
        full = row["prompt"] + row["canonical_solution"]
        node = next(n for n in ast.parse(full).body if getattr(n, "name", None) == row["entry_point"])
        replies.append(f"Here is the function:\n```python\n{ast.get_source_segment(full, node)}\n```\n")
    top_level_imports = [
        line for r in replies for line in r.splitlines() if line.startswith(("import ", "from "))
    ]
    assert len(rows) == 164 and top_level_imports == []
    needs_context = [r["task_id"] for r in rows if prompt_context(r["prompt"], r["entry_point"])]
    assert len(needs_context) >= 23  # imports (typing, math, ...) or helper functions the reply lacks
    scores, programs = TASKS["humaneval"].score(rows, replies)
    assert [r["task_id"] for r, s in zip(rows, scores) if s != 1.0] == []
    # a reply that defines its own helper of the same name wins over the prompt's (it comes later)
    row = next(r for r in rows if r["entry_point"] == "decode_cyclic")
    assert "def encode_cyclic" in programs[rows.index(row)]


def test_illada_protocol_per_task_settings_merged_system_prompt_and_boost(tmp_path, capsys):
    from transformers import AutoTokenizer

    from align.data import prompt_text

    illada = PROTOCOLS["illada"]
    assert (illada.for_task("gsm8k").gen_length, illada.for_task("math500").gen_length) == (2048, 4096)
    assert illada.for_task("mbpp").block_length == 16 and illada.for_task("humaneval").block_length == 32
    assert illada.for_task("math500").per_task == () and illada.boost_token == "</think>"
    # a setting given on the command line wins over the per-task one
    assert illada.with_overrides(gen_length=1024).for_task("math500").gen_length == 1024
    assert illada.with_overrides(gen_length=1024).for_task("mbpp").block_length == 16
    # the system prompt goes into the user turn, the chat template never sees a system role
    tok = AutoTokenizer.from_pretrained(os.path.join(REPO, "recipes", "tiny", "model"))
    seen = []
    tok.apply_chat_template = lambda messages, **kw: seen.append(messages) or "x"
    prompt_text(tok, "What is 2+2?", system_prompt="Think first.", system_in_user=True)
    prompt_text(tok, [{"role": "user", "content": "Hi"}], system_prompt="Be brief.", system_in_user=True)
    assert seen == [[{"role": "user", "content": "Think first.\n\nWhat is 2+2?"}],
                    [{"role": "user", "content": "Be brief.\n\nHi"}]]  # fmt: skip
    # a tokenizer without a one-token </think> gets a one-line error naming the way out
    test = os.path.join(REPO, "recipes", "tiny", "data", "test.jsonl")
    argv = ["eval", "--model", os.path.join(REPO, "recipes", "tiny", "model"), "--tasks", f"tiny={test}",
            "--protocol", "illada", "--limit", "2", "--gen-length", "16", "--block-length", "8", "--output",
            str(tmp_path / "e"), "--dtype", "float32", "--device", "cpu", "--no-chat-template"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "boosts '</think>', which this tokenizer cannot write; pass --boost 0" in err
    argv[argv.index(str(tmp_path / "e"))] = str(tmp_path / "f")
    assert main([*argv, "--boost", "0"]) == 0


def test_every_number_carries_its_run_record_and_report_refuses_mixed_protocols(tmp_path, capsys):
    """results.json: the protocol's settings and their hash, each task's data hash, the model folder's content
    hash, seed and sample count; align report refuses rows of one task decoded under different protocol
    settings (one line), accepts them marked with --allow-mixed, and compares other lengths as usual."""
    from align.cli import main as align

    model = os.path.join(REPO, "recipes", "tiny", "model")
    test = os.path.join(REPO, "recipes", "tiny", "data", "test.jsonl")
    base = ["eval", "--model", model, "--tasks", f"tiny={test}", "--protocol", "tiny", "--dtype", "float32",
            "--device", "cpu", "--limit", "8"]  # fmt: skip
    for name, extra in (
        ("a", []),
        ("b", ["--threshold", "0.5"]),
        ("c", ["--gen-length", "16", "--block-length", "8"]),
    ):
        assert align([*base, *extra, "--output", str(tmp_path / name)]) == 0
    results = {n: json.load(open(tmp_path / n / "results.json")) for n in "abc"}
    config, record = results["a"]["config"], results["a"]["provenance"][-1]
    assert len(config["protocol_hash"]) == 64 and set(config["task_hashes"]) == {"tiny"}
    assert config["protocol_hash"] != results["b"]["config"]["protocol_hash"]
    assert config["task_hashes"] == results["b"]["config"]["task_hashes"]
    identity = record["model_identity"]
    assert identity["path"] == model and len(identity["content"]) == 64 and identity["files"] >= 3
    assert identity == results["b"]["provenance"][-1]["model_identity"] and record["seed"] == 0
    capsys.readouterr()
    assert (
        align(["report", f"A={tmp_path / 'a'}", f"B={tmp_path / 'b'}", "--output", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == ("align report: task tiny: A and B were evaluated under different protocol settings (threshold); "
                   "their scores do not compare. Report them apart, or pass --allow-mixed to put them in one table, "
                   "marked.")  # fmt: skip
    assert align(["report", f"A={tmp_path / 'a'}", f"B={tmp_path / 'b'}", "--output", str(tmp_path / "r"),
                  "--allow-mixed"]) == 0  # fmt: skip
    assert "| B (other protocol) |" in open(tmp_path / "r" / "report.md").read()
    assert (
        align(["report", f"A={tmp_path / 'a'}", f"C={tmp_path / 'c'}", "--output", str(tmp_path / "s")]) == 0
    )

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import pytest
from conftest import tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from align.cli import main
from align.eval.cli import add_eval_parser

WORDS = ["<bos>", "<eos>"] + [f"w{i}" for i in range(37)] + ["<mask>"]  # ids match conftest (mask 39)


def save_tiny_checkpoint(path):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>", mask_token="<mask>"
    )
    fast.save_pretrained(path)
    tiny_model().save_pretrained(path)


def test_generate_command_decodes_prompts_as_json_lines(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path)
    argv = ["generate", "--model", str(tmp_path), "--prompt", "w3 w4 w5", "--prompt", "w7", "--gen_length", "8",
            "--steps", "8", "--block_length", "4", "--no-chat_template", "--dtype", "float32", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()  # library loggers may also write to stdout
    lines = [json.loads(line) for line in out if line.startswith('{"prompt"')]
    assert [line["prompt"] for line in lines] == ["w3 w4 w5", "w7"]
    assert all(line["nfe"] == 8 and "<mask>" not in line["completion"] for line in lines)


def test_train_without_data_says_what_to_set(capsys):
    assert main(["train"]) == 2
    assert "No training data: set dataset_name" in capsys.readouterr().err


def test_train_and_sft_help_list_every_config_field(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert (
        "Completions per prompt (the GRPO group size G)." in out and "--estimator" in out and "--beta" in out
    )
    assert main(["sft", "--help"]) == 0
    assert "--completion_column" in capsys.readouterr().out


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", os.path.join(REPO, "recipes", "tiny", "grpo.yaml"),
        "--model_name_or_path", os.path.join(REPO, "recipes", "tiny", "model"),
        "--dataset_files", os.path.join(REPO, "recipes", "tiny", "data", "train.jsonl")]  # fmt: skip


def _align(args, cwd=REPO):
    """Run `align ...` in a fresh interpreter; returns (exit status, stderr, CPU seconds it used)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "align.cli", *args], capture_output=True, text=True, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc.returncode, proc.stderr, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


@pytest.mark.parametrize("args,code,line", [
    (["train", *TINY, "--model_name_or_path", "/no/such/dir"], 2,
     "align train: model_name_or_path /no/such/dir does not exist; give a local checkpoint folder or a hub id (org/name)."),
    (["train", *TINY, "--dataset_files", "missing.jsonl"], 2,
     f"align train: dataset_files: missing.jsonl does not exist (paths are relative to {REPO})."),
    (["train", *TINY, "--reward_funcs", "math_acuracy", "answer_tag_format"], 2,
     "align train: unknown reward 'math_acuracy'; did you mean math_accuracy? Built-ins are answer_tag_format, "
     "code_execution, countdown, length_penalty, math_accuracy, python_block_format, reasoning_answer_format, "
     "sudoku, think_answer_format, or give package.module:function or path/to/file.py:function."),
    (["train", *TINY, "--beta", "abc"], 2, "align train: --beta 'abc' is not a number."),
    (["dpo", "--config", "recipes/tiny/dpo.yaml", "--beta", "abc"], 2, "align dpo: --beta 'abc' is not a number."),
    (["plan", "recipes/tiny/grpo.yaml", "--num_generation", "8"], 2,
     "align plan: unknown field --num_generation; did you mean --num_generations or --num_iterations?"),
    (["train", *TINY, "--num_generation", "8"], 2,
     "align train: unknown field --num_generation; did you mean --num_generations or --num_iterations?"),
    (["train", *TINY, "--max_step", "1"], 2, "align train: unknown field --max_step; did you mean --max_steps?"),
    (["train", *TINY, "--max_completion_length", "250"], 2,
     "align train: max_completion_length 250 is not a multiple of block_length 8; use e.g. max_completion_length 256."),
    (["train", *TINY, "--use_peft", "maybe"], 2, "align train: --use_peft 'maybe' is not true or false."),
    (["sft", "--config", os.path.join(REPO, "recipes", "tiny", "sft.yaml"), "--num_generations", "8"], 2,
     "align sft: unknown field --num_generations."),
    (["sft", "--config", "recipes/tiny/sft.yaml", "--output_dir", "recipes/tiny/model"], 2,
     "align sft: output_dir recipes/tiny/model holds files committed to git (chat_template.jinja, config.json, "
     "model.safetensors and 2 more); training would overwrite them: give another --output_dir, or "
     "--overwrite_output_dir true to replace them on purpose."),
    (["eval", "--model", "/no/such/path", "--tasks", "gsm8k", "--output", "o"], 2,
     "align eval: --model /no/such/path does not exist; give a local checkpoint folder or a hub id (org/name)."),
    (["eval", "--model", "x", "--tasks", "gsm8k", "--output", "o", "--limit", "abc"], 2,
     "align eval: argument --limit: invalid int value: 'abc'; see align eval --help."),
    (["eval", "--model", "x", "--tasks", "gsm8k", "--output", "o", "--cache-refresh", "4"], 2,
     "align eval: --cache-refresh 4 needs --cache prefix or dual and a value >= 1."),
    (["generate", "--model", "x", "--prompt", "hi", "--gen-length", "250"], 2,
     "align generate: --gen-length 250 is not a multiple of --block-length 32; use e.g. --gen-length 256."),
    (["generate", "--model", "/no/such/path", "--prompt", "hi"], 2,
     "align generate: --model /no/such/path does not exist; give a local checkpoint folder or a hub id (org/name)."),
    (["export", "--model", os.path.join(REPO, "recipes", "tiny", "model"), "--adapter", "/no/adapter", "--output", "o"], 2,
     "align export: --adapter /no/adapter does not exist; give a local checkpoint folder or a hub id (org/name)."),
])  # fmt: skip
def test_user_errors_are_one_line_and_fast(args, code, line):
    status, err, cpu_s = _align(args)
    assert (status, err) == (code, line + "\n")
    assert cpu_s < 1.0, f"{cpu_s:.2f} s of CPU before the error"  # no torch / transformers import


def test_help_is_fast_grouped_and_lists_reward_names():
    for args in (
        ["--help"],
        ["train", "--help"],
        ["sft", "--help"],
        ["eval", "--help"],
        ["generate", "--help"],
        ["dpo", "--help"],
        ["plan", "--help"],
    ):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            [sys.executable, "-m", "align.cli", *args], capture_output=True, text=True, cwd=REPO
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert out.returncode == 0 and after.ru_utime - before.ru_utime < 1.0, args
    text = subprocess.run(
        [sys.executable, "-m", "align.cli", "train", "--help"], capture_output=True, text=True
    ).stdout
    headers = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert [h.split(":")[0].split(" (")[0] for h in headers[2:]] == [
        "model",
        "data",
        "schedule",
        "rollout",
        "estimator",
        "loss",
        "rewards",
        "evaluation",
        "logging",
        "training",
    ]
    assert "math_accuracy, python_block_format" in text and "--learning_rate" in text
    assert text.index("--num_generations") < text.index("--learning_rate")  # the project's fields first
    assert "--log_completions BOOL\n      At each logging step show" in text


def test_reward_module_from_the_working_directory_under_align_train(tmp_path):
    """`reward_funcs: [mypkg.rewards:fn]` resolves from the working directory however the run starts."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "rewards.py").write_text(
        "def fn(prompts, completions, **kw):\n    return [1.0 for _ in completions]\n"
    )
    args = ["train", *TINY, "--reward_funcs", "mypkg.rewards:fn", "--reward_weights", "1", "--max_steps", "1",
            "--per_device_train_batch_size", "8", "--logging_steps", "1", "--output_dir", str(tmp_path / "out"), "--report_to", "none"]  # fmt: skip
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "align"), *args], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    history = json.load(open(tmp_path / "out" / "trainer_state.json"))["log_history"]
    assert [h["rewards/fn/mean"] for h in history if "rewards/fn/mean" in h] == [1.0]


def test_a_raising_reward_stops_training_in_one_line(tmp_path):
    (tmp_path / "bad.py").write_text("def boom(prompts, completions, **kw):\n    raise KeyError('answer')\n")
    args = ["train", *TINY, "--reward_funcs", f"{tmp_path / 'bad.py'}:boom", "--reward_weights", "1", "--max_steps",
            "1", "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "out"), "--report_to", "none"]  # fmt: skip
    status, err, _ = _align(args)
    [line] = [
        x for x in err.splitlines() if x.startswith("align train:")
    ]  # after log lines and a progress bar
    assert status == 1 and "Traceback" not in err
    assert line.startswith(
        "align train: reward function 'boom' raised KeyError: 'answer' on sample 0 (prompt "
    )


def test_a_hanging_reward_stops_training_in_one_line_and_keeps_the_checkpoint(tmp_path):
    """Step 1 scores and saves; at step 2 one sample's reward blocks forever (a sleep here; a C-level hang
    or a dead lock behaves the same): the run stops in one line naming the function and the sample."""
    (tmp_path / "slow.py").write_text(
        "import time\nbatch = []\n"
        "def stuck(prompts, completions, trainer_state=None, **kw):\n"
        "    if trainer_state.global_step >= 1 and len(completions) > 1:\n"
        "        batch[:] = completions\n"
        "        time.sleep(3600)\n"
        "    if batch and completions[0] is batch[3]:  # alone, only sample 3 hangs\n"
        "        time.sleep(3600)\n"
        "    return [0.5 for _ in completions]\n"
    )
    args = ["train", *TINY, "--reward_funcs", f"{tmp_path / 'slow.py'}:stuck", "--reward_weights", "1", "--max_steps",
            "3", "--per_device_train_batch_size", "8", "--save_strategy", "steps", "--save_steps", "1",
            "--reward_timeout_s", "3",
            "--output_dir", str(tmp_path / "out"), "--report_to", "none"]  # fmt: skip
    start = time.monotonic()
    status, err, _ = _align(args)
    [line] = [x for x in err.splitlines() if x.startswith("align train:")]
    assert status == 1 and "Traceback" not in err and time.monotonic() - start < 300
    assert line.startswith("align train: reward function 'stuck' did not return within 3 s for a batch of 8"), line
    assert "; on its own, sample 3 also did not return (prompt '" in line
    assert os.path.isfile(tmp_path / "out" / "checkpoint-1" / "trainer_state.json")


def test_a_missing_prompt_column_is_one_line(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"problem": "1+1=", "answer": "2"}\n' * 16)
    status, err, _ = _align(
        ["train", *TINY, "--dataset_files", str(data), "--output_dir", str(tmp_path / "o")]
    )
    [line] = [x for x in err.splitlines() if x.startswith("align train:")]
    assert status == 2 and "Traceback" not in err
    assert line == ("align train: prompt_column 'question' is not a column of the data; it has ['problem', 'answer']. "
                    "Set --prompt_column to the column that holds it (or rename with --rename_columns old:new).")  # fmt: skip


def test_both_flag_spellings_and_yaml_resume_true(tmp_path):
    from align.fields import GRPOFields, recipe_values

    recipe = tmp_path / "r.yaml"
    recipe.write_text("resume_from_checkpoint: true\ndataset_files: [a.jsonl]\n")
    values = recipe_values(GRPOFields, str(recipe), ["--num-generations", "4", "--use_peft"], "align train")
    assert values == {"resume_from_checkpoint": "True", "dataset_files": ["a.jsonl"], "num_generations": 4,
                      "use_peft": True}  # fmt: skip
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_eval_parser(sub)
    for spelling in ("--gen-length", "--gen_length"):
        args = parser.parse_args(
            ["eval", "--model", "m", "--tasks", "gsm8k", "--output", "o", spelling, "64"]
        )
        assert args.gen_length == 64


def test_the_light_path_never_imports_torch():
    """The torch-free modules and every subcommand's --help leave torch (and transformers) unloaded: the
    package faces resolve their names lazily."""
    code = """
import contextlib, io, sys
import align.fields, align.objectives, align.rollout, align.sampling.settings, align.eval.tasks, align.cli
from align.cli import main
for sub in ("train", "sft", "dpo", "plan", "bench", "eval", "generate", "report", "export"):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([sub, "--help"])
        except SystemExit:
            pass
print(sorted(m for m in ("torch", "transformers", "trl", "numpy") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = out.stdout.strip().splitlines()[-1]
    assert "torch" not in loaded and "transformers" not in loaded, loaded


def test_recipe_traps_are_one_line_each(tmp_path):
    """YAML 1.1 booleans for string fields, a field given twice, an empty recipe, a folder, --config twice:
    one line each, exit 2, before torch loads; a bare yes for a boolean field still means true."""
    recipes = {
        "no.yaml": "save_strategy: no\n",
        "off.yaml": "dataset_files: [recipes/tiny/data/train.jsonl]\nlr_scheduler_type: linear\ncache: off\n",
        "twice.yaml": "learning_rate: 1.0e-6\nnum_generations: 4\nlearning_rate: 2.0e-6\n",
        "empty.yaml": "\n",
    }
    for name, text in recipes.items():
        (tmp_path / name).write_text(text)
    cases = [
        (["--config", str(tmp_path / "no.yaml")],
         f'{tmp_path}/no.yaml: line 1: YAML reads save_strategy: no as a boolean; quote it: save_strategy: "no".'),
        (["--config", str(tmp_path / "off.yaml")],
         f'{tmp_path}/off.yaml: line 3: YAML reads cache: off as a boolean; quote it: cache: "off".'),
        (["--config", str(tmp_path / "twice.yaml")],
         f"{tmp_path}/twice.yaml: field 'learning_rate' is given twice (lines 1 and 3); keep one."),
        (["--config", str(tmp_path / "empty.yaml")],
         f"--config {tmp_path}/empty.yaml is empty; give a recipe with fields, or leave --config out and give every "
         "field on the command line."),
        (["--config", str(tmp_path)], f"--config {tmp_path} is a folder; give a recipe YAML file (e.g. {tmp_path}/grpo.yaml)."),
        (["--config", "recipes/tiny/grpo.yaml", "--config", str(tmp_path / "no.yaml")],
         f"--config given 2 times (recipes/tiny/grpo.yaml, {tmp_path}/no.yaml); give one recipe and override its "
         "fields with --field value."),
    ]  # fmt: skip
    for args, line in cases:
        status, err, cpu_s = _align(["train", *args])
        assert (status, err) == (2, f"align train: {line}\n")
        assert cpu_s < 1.0
    (tmp_path / "yes.yaml").write_text("use_peft: yes\nsave_strategy: \"no\"\n")
    from align.config import load_config

    config = load_config(str(tmp_path / "yes.yaml"), ["--dataset_files", "recipes/tiny/data/train.jsonl",
                                                      "--output_dir", str(tmp_path / "o")])  # fmt: skip
    assert config.use_peft is True and str(config.save_strategy.value) == "no"


def test_a_second_run_into_the_same_output_dir_is_refused_naming_the_holder(tmp_path):
    """Two processes: the one holding output_dir's lock is named; once it is gone (killed, no clean-up), the
    folder is free again."""
    import signal

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom align.output_dir import OutputLock\n"
                               f"OutputLock({str(out)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(600)\n"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        status, err, _ = _align(["train", *TINY, "--output_dir", str(out), "--max_steps", "1"])
        assert status == 2 and err.startswith(f"align train: output_dir {out} is in use by another run (pid "
                                              f"{holder.pid} on host ")  # fmt: skip
        assert err.endswith("); wait for it or stop it, or give another --output_dir.\n") and err.count("\n") == 1
        assert not any(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    from align.output_dir import OutputLock

    OutputLock(str(out)).acquire().release()  # the dead holder's lock went with its process

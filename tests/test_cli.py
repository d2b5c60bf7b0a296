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
     "code_execution, countdown, length_penalty, loop_penalty, math_accuracy, python_block_format, "
     "reasoning_answer_format, repetition_penalty, sudoku, think_answer_format, or give package.module:function or "
     "path/to/file.py:function."),
    (["train", *TINY, "--reward_funcs", "repetition_penalty(ngram_size=0)", "answer_tag_format"], 2,
     "align train: repetition_penalty: ngram_size must be a whole number >= 1, got 0."),
    (["train", *TINY, "--reward_funcs", "repetition_penalty(ngram=3)", "answer_tag_format"], 2,
     "align train: reward repetition_penalty: no parameter ngram; its parameters are max_penalty, ngram_size."),
    (["train", *TINY, "--reward_funcs", "loop_penalty(penalty=1)", "answer_tag_format"], 2,
     "align train: loop_penalty: penalty 1 should not be positive (it is a penalty)."),
    (["train", *TINY, "--reward_funcs", "loop_penalty(penalty=-1", "answer_tag_format"], 2,
     "align train: reward spec 'loop_penalty(penalty=-1': parameters are written name(key=value, ...), closed by ')'."),
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
    assert line.startswith(
        "align train: reward function 'stuck' did not return within 3 s for a batch of 8"
    ), line
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
    from align.fields import GRPOFields
    from align.recipe import recipe_values

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
    (tmp_path / "yes.yaml").write_text('use_peft: yes\nsave_strategy: "no"\n')
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
        assert (
            err.endswith("); wait for it or stop it, or give another --output_dir.\n")
            and err.count("\n") == 1
        )
        assert not any(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    from align.output_dir import OutputLock

    OutputLock(str(out)).acquire().release()  # the dead holder's lock went with its process


# ---- the new-user mistakes (issue list): one line each that says what to fix, exit 2 -----------------------
def _no_chat_copy(tmp_path):
    """recipes/tiny/model without its chat template (its tokenizer files carry none)."""
    import shutil

    path = tmp_path / "nochat"
    shutil.copytree(os.path.join(REPO, "recipes", "tiny", "model"), path)
    (path / "chat_template.jinja").unlink()
    assert "chat_template" not in (path / "tokenizer_config.json").read_text()
    return path


def _fake_adapter(tmp_path):
    path = tmp_path / "lora"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "recipes/tiny/model",
                                                          "peft_type": "LORA"}))  # fmt: skip
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


def test_mistakes_known_before_torch_loads_are_one_line_and_fast(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    adapter = _fake_adapter(tmp_path)
    cols = tmp_path / "cols.jsonl"
    cols.write_text('{"q": "1+1=", "a": "2"}\n')
    out = str(tmp_path / "o")
    cases = [
        (["train", *TINY, "--dataset_files", str(empty), "--output_dir", out],
         f"align train: dataset_files: {empty} is empty (no rows); give a file with one row per line (JSONL), or the "
         "file this recipe meant."),
        (["train", *TINY, "--model_name_or_path", str(adapter), "--output_dir", out],
         f"align train: model_name_or_path {adapter} holds a LoRA adapter (adapter_config.json), not a model; merge "
         f"it into its base first (align export --model recipes/tiny/model --adapter {adapter} --output MERGED) and "
         "give model_name_or_path MERGED."),
        (["eval", "--model", str(adapter), "--tasks", f"t={cols}", "--output", out],
         f"align eval: --model {adapter} holds a LoRA adapter (adapter_config.json), not a model; give --model "
         f"recipes/tiny/model --adapter {adapter}, or merge them first (align export --model recipes/tiny/model "
         f"--adapter {adapter} --output MERGED)."),
        (["eval", "--model", "recipes/tiny/model", "--tasks", f"t={cols}", "--output", out],
         "align eval: task t: rows lack column(s) ['answer', 'question']; they have ['a', 'q'] (rename with "
         "--rename-columns old:new ...)."),
        (["eval", "--model", "recipes/tiny/model", "--tasks", f"t={cols}", "--output", out, "--rename-columns", "x:question"],
         "align eval: task t: --rename-columns x:...: no column 'x'; the rows have ['a', 'q']."),
    ]  # fmt: skip
    for args, line in cases:
        status, err, cpu_s = _align(args)
        assert (status, err) == (2, line + "\n")
        assert cpu_s < 1.0, f"{cpu_s:.2f} s of CPU before the error"


def test_a_logging_integration_that_is_not_installed_is_one_line(tmp_path):
    import importlib.util

    from align.machine import INTEGRATION_MODULES

    missing = next((n for n, mods in INTEGRATION_MODULES.items() if n not in ("tensorboard", "azure_ml")
                    and not any(importlib.util.find_spec(m) for m in mods)), None)  # fmt: skip
    assert missing is not None  # this venv installs none of wandb, mlflow, comet_ml, ...
    status, err, cpu_s = _align(
        ["train", *TINY, "--report_to", "tensorboard", missing, "--output_dir", str(tmp_path)]
    )
    assert (status, err) == (2, f"align train: report_to {missing} needs the {INTEGRATION_MODULES[missing][0]} "
                                f"package, which is not installed here; pip install {INTEGRATION_MODULES[missing][0]}, "
                                "or log elsewhere (--report_to tensorboard).\n")  # fmt: skip
    assert cpu_s < 1.0


def test_stray_distributed_variables_outside_a_launcher_are_one_line(tmp_path):
    from align.errors import UsageError
    from align.machine import check_launch_env

    env = {**os.environ, "WORLD_SIZE": "4", "RANK": "1"}
    for key in ("LOCAL_RANK", "MASTER_ADDR"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "align.cli", "train", *TINY, "--output_dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, env=env)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (2, "align train: WORLD_SIZE=4, RANK=1 in the environment, but no "
                                                 "launcher started this process (LOCAL_RANK and MASTER_ADDR are unset); "
                                                 "unset them for a single-process run (env -u WORLD_SIZE -u RANK ...), or "
                                                 "start it with accelerate launch.\n")  # fmt: skip
    check_launch_env(
        {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1"}
    )  # a launch
    check_launch_env({"WORLD_SIZE": "1", "RANK": "0"})  # one process says so: harmless
    with pytest.raises(UsageError, match="RANK must be in 0..WORLD_SIZE-1"):
        check_launch_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x"})
    with pytest.raises(UsageError, match="is not a number"):
        check_launch_env({"WORLD_SIZE": "two"})


def test_a_deepspeed_launch_asking_for_bf16_on_a_cpu_machine_names_the_flags():
    import torch

    from align.errors import UsageError
    from align.machine import check_cpu_launch

    launch = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": "bf16"}
    if torch.cuda.is_available():
        check_cpu_launch(launch)
        return
    with pytest.raises(UsageError) as caught:
        check_cpu_launch(launch)
    assert str(caught.value) == ("this DeepSpeed launch asks for bf16 mixed precision on a machine without a GPU; on "
                                 "CPU add --mixed_precision no to accelerate launch (DS_ACCELERATOR=cpu accelerate "
                                 "launch --config_file ... --mixed_precision no -m align.train ... --use_cpu true).")  # fmt: skip
    check_cpu_launch({**launch, "ACCELERATE_MIXED_PRECISION": "no"})
    check_cpu_launch({"ACCELERATE_MIXED_PRECISION": "bf16"})  # DDP on CPU runs bf16 autocast


def test_mistakes_found_from_the_checkpoint_are_one_line_before_weights_load(tmp_path):
    """An autoregressive checkpoint (the README's own AR baseline shape), with or without its remote-code
    flag; a model without a chat template when prompts are chat; --device cuda on a CPU-only torch; a
    reward's gold column under another name; the hub unreachable for a built-in task (no retries)."""
    import socket

    import torch

    nochat = _no_chat_copy(tmp_path)
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"question": "1+1=", "solution_text": "2"}\n' * 16)
    ar = ("recipes/tiny-ar/model (Qwen2ForCausalLM) is an autoregressive model (transformers' qwen2, causal "
          "attention), not a masked diffusion model; give a diffusion checkpoint (LLaDA, Dream, SDAR, ...); an "
          "autoregressive baseline is evaluated through its server: align eval --endpoint URL --served-model NAME.")  # fmt: skip
    chat = ("has no chat template (none in its tokenizer files), and prompts are formatted as chat; give plain-text "
            "prompts ({}) or add the chat template (chat_template.jinja) of the model it was trained from.")  # fmt: skip
    with socket.socket() as s:  # a port nothing listens on: the hub is unreachable whatever the network
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    data = ["--tasks", "t=recipes/tiny/data/test.jsonl", "--limit", "2"]
    cases = [
        (["eval", "--model", "recipes/tiny-ar/model", *data, "--output", str(tmp_path / "e1")], f"align eval: {ar}"),
        (["eval", "--model", "recipes/tiny-ar/model", "--trust-remote-code", *data, "--output", str(tmp_path / "e2")],
         f"align eval: {ar}"),
        (["train", *TINY, "--model_name_or_path", "recipes/tiny-ar/model", "--trust_remote_code", "true",
          "--output_dir", str(tmp_path / "o1")], f"align train: {ar}"),
        (["train", *TINY, "--model_name_or_path", str(nochat), "--use_chat_template", "true",
          "--output_dir", str(tmp_path / "o2")], f"align train: {nochat} " + chat.format("use_chat_template false")),
        (["eval", "--model", str(nochat), *data, "--protocol", "llada", "--output", str(tmp_path / "e3")],
         f"align eval: {nochat} " + chat.format("--no-chat-template")),
        (["train", *TINY, "--dataset_files", str(gold), "--output_dir", str(tmp_path / "o3")],
         "align train: reward math_accuracy reads a column named 'answer' or 'solution', which the data lacks (it has "
         "['question', 'solution_text']); rename one with --rename_columns old:answer."),
        (["eval", "--model", "recipes/tiny/model", "--tasks", "gsm8k", "--limit", "1", "--output", str(tmp_path / "e4")],
         f"align eval: task gsm8k: the hub is unreachable from here (127.0.0.1:{closed}: Connection refused) and "
         "openai/gsm8k is not in the local cache; offline, pass --data-dir DIR with DIR/gsm8k.jsonl."),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append((["eval", "--model", "recipes/tiny/model", *data, "--device", "cuda", "--output", str(tmp_path / "e5")],
                      f"align eval: --device cuda: {'this torch is a CPU build' if torch.version.cuda is None else 'no CUDA device is visible'} "
                      f"(torch {torch.__version__}); use --device cpu or leave --device out."))  # fmt: skip
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed}"}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                "ALL_PROXY", "all_proxy"):  # fmt: skip
        env.pop(key, None)
    for args, line in cases:
        proc = subprocess.run([sys.executable, "-m", "align.cli", *args], capture_output=True, text=True, cwd=REPO,
                              env=env)  # fmt: skip
        lines = [x for x in proc.stderr.splitlines() if x.startswith(("align train:", "align eval:"))]
        assert (proc.returncode, lines) == (2, [line]), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr
        assert not any(tmp_path.glob("o*/model.safetensors"))


def test_a_model_whose_config_and_tokenizer_have_no_mask_token_is_refused(tmp_path):
    """A checkpoint with code of its own (auto_map) whose config has no mask_token_id and whose tokenizer
    has no mask token: not a masked diffusion model, whatever its architecture says."""
    import shutil
    import types

    from align.errors import UsageError
    from align.models.family import check_mask_token

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(REPO, "recipes", "tiny-ar", "model", name), tmp_path / name)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    settings.pop("mask_token", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    config = types.SimpleNamespace(
        model_type="mydlm", architectures=["MyDLM"], auto_map={"AutoModel": "m.MyDLM"}
    )
    with pytest.raises(UsageError) as caught:
        check_mask_token(str(tmp_path), config)
    assert str(caught.value).startswith(f"{tmp_path} (MyDLM) is not a masked diffusion model: its config has no "
                                        "mask_token_id and its tokenizer no mask token.")  # fmt: skip
    check_mask_token(str(tmp_path), types.SimpleNamespace(**vars(config), mask_token_id=2))  # the config says


def test_conversational_data_gives_rewards_chat_completions_as_trl_does():
    """open-r1's rewards read completion[0]["content"]: with chat-message prompts every reward gets the
    prompts as messages and each completion as [{"role": "assistant", "content": text}]; plain-text data
    keeps plain strings."""
    import torch

    from align.rollout.rewards import RewardSet

    seen = {}

    def accuracy_reward(completions, solution, **kwargs):  # open-r1's shape
        seen["prompts"], seen["completions"] = kwargs["prompts"], completions
        return [float(c[0]["content"] == s) for c, s in zip(completions, solution)]

    rewards = RewardSet([accuracy_reward])
    chat = [{"role": "user", "content": "1+1="}]
    rows = [{"prompt": chat, "solution": "2"}] * 2
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)
    out, _ = rewards.score(["<text>"] * 2, ["2", "3"], ids, mask, rows, None, raw_prompts=[chat, chat])
    assert out[:, 0].tolist() == [1.0, 0.0]
    assert seen["prompts"] == [chat, chat] and seen["completions"][0] == [
        {"role": "assistant", "content": "2"}
    ]
    from align.rollout.rewards import RewardError

    with pytest.raises(RewardError):  # plain-text data: the same reward meets strings, as under TRL
        rewards.score(["q"] * 2, ["2", "3"], ids, mask, [{"prompt": "q", "solution": "2"}] * 2, None,
                      raw_prompts=["q", "q"])  # fmt: skip


def test_chat_prompts_with_use_chat_template_false_are_refused_not_trained_as_their_repr():
    """Conversational DPO pairs (or GRPO / SFT prompts) with use_chat_template false: one line, instead of
    training on the Python repr of the message list."""
    from align.data import prompt_text

    with pytest.raises(ValueError) as caught:
        prompt_text(None, [{"role": "user", "content": "hi"}], use_chat_template=False)
    assert str(caught.value) == ("the prompts are chat messages (lists of role / content), but use_chat_template is "
                                 "false; set use_chat_template true, or give plain-text prompts.")  # fmt: skip
    assert prompt_text(None, "hi", system_prompt="s", use_chat_template=False) == "s\nhi"


def test_peft_all_linear_wraps_every_linear_layer_but_the_head():
    import types

    import torch

    from align.runner import add_lora

    model = tiny_model()
    head = model.get_output_embeddings()
    leaves = {
        n.rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    }
    layers = sum(isinstance(m, torch.nn.Linear) and m is not head for m in model.modules())
    config = types.SimpleNamespace(lora_target_modules=["all-linear"], lora_r=2, lora_alpha=4, lora_dropout=0.0,
                                   seed=0)  # fmt: skip
    wrapped = add_lora(model, config)
    assert set(wrapped.peft_config["default"].target_modules) == leaves and len(leaves) >= 4
    assert not any("lora_" in n for n, _ in head.named_parameters())
    wrapped_layers = {n.rsplit(".", 2)[0] for n, _ in wrapped.named_parameters() if "lora_A" in n}
    assert len(wrapped_layers) == layers  # every linear layer but the head


def test_cpu_runs_take_the_idle_cores_unless_the_user_chose(monkeypatch):
    import torch

    from align.machine import cpu_threads, set_cpu_threads, threads_for_cpu_run

    assert [
        cpu_threads(2, 2.1),
        cpu_threads(2, 0.0),
        cpu_threads(8, 3.4),
        cpu_threads(8, 0.2),
        cpu_threads(4, 9.0),
    ] == [1, 2, 5, 8, 1]
    assert os.environ.get("OMP_NUM_THREADS")  # conftest chose: a run keeps the user's choice
    assert set_cpu_threads() is None and threads_for_cpu_run(True) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(10**6))  # a launch's processes share the cores: one each here
    before = torch.get_num_threads()
    try:
        assert threads_for_cpu_run(True) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_a_read_only_hugging_face_cache_still_reads_local_data(tmp_path):
    """HF_HOME on a read-only mount (a cluster's shared cache): local data files load through a private
    temporary cache with one warning, and the run trains. Needs a private mount namespace (root here)."""
    cache = tmp_path / "hf"
    cache.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {cache} {cache} && mount -o remount,bind,ro "
                            f"{cache} {cache} && ! touch {cache}/x"], capture_output=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("no private mount namespace here (needs root / CAP_SYS_ADMIN)")
    out = tmp_path / "out"
    command = (f"mount --bind {cache} {cache} && mount -o remount,bind,ro {cache} {cache} && exec {sys.executable} "
               f"-m align.cli train {' '.join(TINY)} --max_steps 1 --save_strategy no --report_to none "
               f"--output_dir {out}")  # fmt: skip
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", command],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HOME": str(cache)},
        timeout=600,
    )  # hang guard; ~15 s observed
    assert proc.returncode == 0, proc.stderr[-2000:]
    [warning] = [x for x in proc.stderr.splitlines() if "align.data" in x]
    assert (
        f"the datasets cache {cache}/datasets is not writable (Read-only file system); local data files are "
        "read through " in warning
    )
    assert (out / "model.safetensors").is_file() and not any(cache.iterdir())

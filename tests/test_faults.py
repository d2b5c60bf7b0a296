"""What clusters and users do to runs: checkpoints cut mid-write, a full disk, SIGTERM / SIGINT."""
# ruff: noqa: F811  (the workspace fixture is imported from test_trainer and named by each test)

import json
import os
import re
import signal
import subprocess

import pytest
import torch
from test_trainer import REPO, REWARDS, _finished_run, _launch, _launch_command, config, workspace  # noqa: F401

from align.checkpoints import MANIFEST, Stopped, checkpoint_problem
from align.errors import RunError, UsageError
from align.train import build_trainer

COMMON = ("--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1", "--optim", "sgd",
          "--learning_rate", "0.5", "--max_grad_norm", "0")  # fmt: skip


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def _same(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a) < 1e-6


@pytest.fixture(scope="module")
def straight(workspace, tmp_path_factory):
    trainer = build_trainer(config(workspace, tmp_path_factory.mktemp("straight"), *COMMON))
    trainer.train()
    return _params(trainer)


@pytest.mark.parametrize("cut", ["truncated", "removed"])
def test_resume_skips_a_checkpoint_cut_mid_write(workspace, tmp_path, straight, cut, caplog):
    first = build_trainer(config(workspace, tmp_path, *COMMON))
    first.train()
    out = tmp_path / "out"
    assert all(checkpoint_problem(str(out / f"checkpoint-{n}")) is None for n in (1, 2, 3))
    assert not os.listdir(out / ".staging")  # every staged checkpoint was renamed
    if cut == "truncated":  # what a kill or a full disk leaves: half of the weights
        weights = out / "checkpoint-3" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        why = rf"its file model.safetensors has {weights.stat().st_size} of {2 * weights.stat().st_size}(\d)? bytes"
    else:
        (out / "checkpoint-3" / "trainer_state.json").unlink()
        why = "its file trainer_state.json is missing"  # a full disk before the state was written
    (out / "checkpoint-4").mkdir()  # a folder from a writer that never finished (no manifest)
    (out / "checkpoint-4" / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(UsageError, match=rf"resume_from_checkpoint {out}/checkpoint-3 is incomplete: {why}; the "
                       rf"newest complete one is {out}/checkpoint-2 \(or pass true\)\."):  # fmt: skip
        build_trainer(config(workspace, tmp_path, *COMMON)).train(
            resume_from_checkpoint=str(out / "checkpoint-3")
        )
    resumed = build_trainer(config(workspace, tmp_path, *COMMON))
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint="true")
    assert re.search(
        rf"resuming from {out}/checkpoint-2; skipped incomplete {out}/checkpoint-3 \({why}\)", caplog.text
    )
    assert f"{out}/checkpoint-4 (it has no {MANIFEST} (its save did not finish))" in caplog.text
    assert resumed.state.global_step == 3 and _same(_params(resumed), straight)


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_complete_checkpoint(
    workspace, tmp_path, straight
):
    trainer = build_trainer(config(workspace, tmp_path, *COMMON))
    save_rng = trainer._save_rng_state

    def full_disk_at_step_2(output_dir):
        if trainer.state.global_step == 2:
            raise OSError(28, "No space left on device", os.path.join(output_dir, "rng_state.pth"))
        save_rng(output_dir)

    trainer._save_rng_state = full_disk_at_step_2
    out = tmp_path / "out"
    with pytest.raises(RunError) as caught:
        trainer.train()
    assert str(caught.value) == (
        f"saving checkpoint-2 failed (No space left on device: {out}/.staging/checkpoint-2/rng_state.pth); nothing "
        f"was renamed, the newest complete checkpoint is {out}/checkpoint-1: free space and resume with "
        "--resume_from_checkpoint true."
    )
    assert not (out / "checkpoint-2").exists()
    resumed = build_trainer(config(workspace, tmp_path, *COMMON))
    resumed.train(resume_from_checkpoint="true")  # from checkpoint-1; the stale staged copy is replaced
    assert _same(_params(resumed), straight)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_at_the_end_of_the_step_and_the_resume_matches(
    workspace, tmp_path, straight, name, monkeypatch, sends_sigint
):
    monkeypatch.setenv("ALIGN_TEST_SIGNAL_NAME", name)
    monkeypatch.setenv("_ALIGN_SENT", "")  # undone at teardown, whatever the reward sets
    argv = (*COMMON, "--save_steps", "100", "--reward_funcs", f"{REWARDS}:signalled")
    trainer = build_trainer(config(workspace, tmp_path, *argv))
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Stopped) as caught:
        trainer.train()  # the signal arrives while step 2 rolls out
    out = tmp_path / "out"
    assert str(caught.value) == (
        f"stopped by {name} after step 2: saved {out}/checkpoint-2; resume with --resume_from_checkpoint true."
    )
    assert caught.value.exit_code == 128 + getattr(signal, name)
    assert checkpoint_problem(str(out / "checkpoint-2")) is None and not (out / "model.safetensors").exists()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored
    resumed = build_trainer(config(workspace, tmp_path, *argv))
    resumed.train(resume_from_checkpoint="true")
    assert resumed.state.global_step == 3 and _same(_params(resumed), straight)


def test_a_second_signal_stops_at_once(workspace, tmp_path, monkeypatch, sends_sigint):
    monkeypatch.setenv("ALIGN_TEST_SIGNALS", "2")
    monkeypatch.setenv("_ALIGN_SENT", "")  # undone at teardown, whatever the reward sets
    trainer = build_trainer(config(workspace, tmp_path, *COMMON, "--reward_funcs", f"{REWARDS}:signalled"))
    before = (
        signal.getsignal(signal.SIGTERM),
        signal.getsignal(signal.SIGINT),
    )  # SIG_IGN under a background job
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-2").exists()  # checkpoint-1 is the last saved
    assert checkpoint_problem(str(tmp_path / "out" / "checkpoint-1")) is None
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored


def test_saving_again_over_an_existing_checkpoint_keeps_it_complete(workspace, tmp_path):
    trainer = build_trainer(config(workspace, tmp_path, *COMMON, "--max_steps", "1"))
    trainer.train()
    trainer._save_checkpoint(trainer.model, None)  # e.g. the step's own save, then a stop request's
    assert checkpoint_problem(str(tmp_path / "out" / "checkpoint-1")) is None
    assert torch.load(tmp_path / "out" / "checkpoint-1" / "rng_state.pth", weights_only=False) is not None


def test_align_train_prints_one_line_and_exits_143_on_sigterm(workspace, tmp_path, monkeypatch, capsys):
    from align.cli import main

    monkeypatch.setenv("ALIGN_TEST_SIGNAL_NAME", "SIGTERM")
    monkeypatch.setenv("_ALIGN_SENT", "")  # undone at teardown, whatever the reward sets
    args = ["train", "--model_name_or_path", str(workspace / "model"), "--dataset_files",
            str(workspace / "data" / "train.jsonl"), "--output_dir", str(tmp_path / "out"), "--use_chat_template",
            "false", "--max_completion_length", "8", "--block_length", "8", "--diffusion_steps", "8",
            "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_steps", "3", "--dtype", "float32",
            "--reward_funcs", f"{REWARDS}:signalled", "--report_to", "none", "--use_cpu", "true"]  # fmt: skip
    assert main(args) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"align train: stopped by SIGTERM after step 2: saved {tmp_path}/out/checkpoint-2; resume with "
                       "--resume_from_checkpoint true.")  # fmt: skip
    assert any("SIGTERM: finishing step 2, saving a checkpoint, then stopping" in line for line in err)


@pytest.mark.slow
def test_two_process_ddp_stops_together_when_one_rank_is_signalled(workspace, tmp_path):
    """SIGTERM to rank 0 only: both ranks save checkpoint-2 at the same step (the request is all-reduced), the
    launch fails with the one line, and both ranks resumed from it end at the uninterrupted run's parameters."""
    accelerate = os.path.join(REPO, "recipes", "accelerate", "ddp.yaml")
    env = {"ACCELERATE_USE_CPU": "1"}
    extra = ("--max_steps", "3", "--reward_funcs", f"{REWARDS}:signalled")
    _, straight = _launch(
        workspace, tmp_path / "straight", accelerate, {**env, "ALIGN_TEST_SIGNAL_STEP": "0"}, *extra
    )
    cmd = _launch_command(workspace, tmp_path / "cut", accelerate, [], *extra)
    run_env = {
        **os.environ,
        **env,
        "OMP_NUM_THREADS": "1",
        "PYTHONFAULTHANDLER": "1",
        "ALIGN_TEST_SIGNAL_RANK": "0",
    }
    run_env.pop("_ALIGN_SENT", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=600, cwd=REPO)
    assert proc.returncode != 0
    out = tmp_path / "cut" / "out"
    assert f"stopped by SIGTERM after step 2: saved {out}/checkpoint-2; resume with" in proc.stderr
    assert checkpoint_problem(str(out / "checkpoint-2")) is None and not (out / "model.safetensors").exists()
    _, resumed = _launch(workspace, tmp_path / "cut", accelerate, {**env, "ALIGN_TEST_SIGNAL_STEP": "0"}, *extra,
                         "--resume_from_checkpoint", "true")  # fmt: skip
    worst = max((p - resumed.state_dict()[n]).abs().max().item() for n, p in straight.state_dict().items())
    assert worst < 1e-6, worst


def test_a_nonfinite_gradient_stops_at_that_step_with_one_line(workspace, tmp_path):
    """A NaN gradient at step 3 (what lr 1e6 gave, silently, before a crash inside the sampler a step later)."""
    trainer = build_trainer(config(workspace, tmp_path, *COMMON, "--max_steps", "5"))
    weight = dict(trainer.model.named_parameters())["model.transformer.ln_f.weight"]
    weight.register_hook(lambda g: g * float("nan") if trainer.state.global_step == 2 else g)
    with pytest.raises(RunError) as caught:
        trainer.train()
    after = _params(trainer)
    assert str(caught.value) == (
        f"step 3: the gradient norm is nan; stopped before updating the weights (nothing saved). The newest "
        f"complete checkpoint is {tmp_path}/out/checkpoint-2. Lower learning_rate (it is 0.5) or set "
        "on_nonfinite: skip to drop such updates."
    )
    assert all(torch.isfinite(p).all() for p in after.values())
    assert not (tmp_path / "out" / "checkpoint-3").exists()


def test_on_nonfinite_skip_drops_the_update(workspace, tmp_path, caplog):
    trainer = build_trainer(
        config(workspace, tmp_path, *COMMON, "--on_nonfinite", "skip", "--max_steps", "2")
    )
    before = _params(trainer)
    first = dict(trainer.model.named_parameters())["model.transformer.ln_f.weight"]
    hook = first.register_hook(lambda g: torch.full_like(g, float("nan")))  # every step's gradient is NaN
    with caplog.at_level("WARNING"):
        trainer.train()
    hook.remove()
    assert _same(_params(trainer), before)  # no update was applied
    assert "step 1: gradient norm nan, update skipped (on_nonfinite: skip; 1 so far)." in caplog.text
    assert "step 2: gradient norm nan, update skipped (on_nonfinite: skip; 2 so far)." in caplog.text


def test_nan_logits_in_the_sampler_are_one_line():
    from align.sampling.diffusion import sample_tokens

    logits = torch.zeros(1, 2, 5)
    logits[0, 1, 3] = float("nan")
    with pytest.raises(RunError, match="the model's next-token probabilities are not finite"):
        sample_tokens(logits, 1.0, "low_confidence")


# ---- mistakes that used to print tracebacks: one line each, exact text ----------------------------------


def _cli(workspace, tmp_path, *extra):
    return ["train", "--model_name_or_path", str(workspace / "model"), "--dataset_files",
            str(workspace / "data" / "train.jsonl"), "--output_dir", str(tmp_path / "out"), "--use_chat_template",
            "false", "--max_completion_length", "8", "--block_length", "8", "--diffusion_steps", "8",
            "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_steps", "1", "--dtype", "float32",
            "--reward_funcs", f"{REWARDS}:ones_fraction", "--report_to", "none", "--use_cpu", "true", *extra]  # fmt: skip


def _one_line(capsys, argv, code=2):
    from align.cli import main

    assert main(argv) == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("align train:")]
    assert len(err) == 1, err
    return err[0]


def test_one_line_for_a_reward_file_with_a_syntax_error(workspace, tmp_path, capsys):
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def score(prompts, completions, **kw):\n    return [1.0 for c in completions\n")
    line = _one_line(capsys, _cli(workspace, tmp_path, "--reward_funcs", f"{bad}:score"))
    assert line == f"align train: reward file {bad} line 2: '[' was never closed; fix the file."


def test_one_line_for_a_reward_class_and_a_reward_returning_strings(workspace, tmp_path, capsys):
    line = _one_line(capsys, _cli(workspace, tmp_path, "--reward_funcs", f"{REWARDS}:ClassReward"))
    assert line == (f"align train: reward spec '{REWARDS}:ClassReward': ClassReward is a class, not a function; give "
                    "a function def classreward(prompts, completions, **kwargs) -> list[float], or module:instance of it.")  # fmt: skip
    line = _one_line(
        capsys, _cli(workspace, tmp_path, "--reward_funcs", f"{REWARDS}:returns_strings"), code=1
    )
    assert line == ("align train: reward function 'returns_strings' returned str '1.0' for completion 0; a reward is a "
                    "number (int or float) or None per completion.")  # fmt: skip


def test_one_line_for_a_corrupt_jsonl_line(workspace, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    lines = (workspace / "data" / "train.jsonl").read_text().splitlines()
    lines[6] = lines[6][:-3]  # line 7 cut short
    data.write_text("\n".join(lines) + "\n")
    line = _one_line(capsys, _cli(workspace, tmp_path, "--dataset_files", str(data)))
    assert line.startswith(f"align train: {data} line 7: not valid JSON (")
    assert line.endswith("); each line must be one JSON object.")
    from align.eval.tasks import TASKS

    with pytest.raises(ValueError, match=rf"^{re.escape(str(data))} line 7: not valid JSON"):
        TASKS["gsm8k"].load(path=str(data))


def test_one_line_for_an_output_dir_that_is_a_file_or_not_writable(workspace, tmp_path, capsys):
    afile = tmp_path / "taken"
    afile.write_text("")
    line = _one_line(capsys, _cli(workspace, tmp_path, "--output_dir", str(afile)))
    assert line == f"align train: output_dir {afile} is a file; give a folder (it is created when missing)."
    line = _one_line(
        capsys, _cli(workspace, tmp_path, "--output_dir", "/proc/align-out")
    )  # unwritable even as root
    assert line.startswith("align train: output_dir /proc/align-out is not writable (")


def test_one_line_for_push_to_hub_without_the_hub(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    line = _one_line(capsys, _cli(workspace, tmp_path, "--push_to_hub", "true"))
    assert (
        line == "align train: push_to_hub true, but HF_HUB_OFFLINE is set; unset it or set push_to_hub false."
    )


def test_one_line_for_a_model_folder_without_a_tokenizer(workspace, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(workspace / "model", bare)
    for name in os.listdir(bare):
        if "token" in name or name.endswith((".model", ".txt")):
            os.remove(bare / name)
    line = _one_line(capsys, _cli(workspace, tmp_path, "--model_name_or_path", str(bare)))
    assert line == (f"align train: {bare} has no tokenizer (no tokenizer.json / tokenizer_config.json): copy the base "
                    "model's tokenizer files into it (a LoRA export or a checkpoint-N folder has them when saved by align).")  # fmt: skip


def test_one_line_for_a_misspelt_lora_target(workspace, tmp_path, capsys):
    line = _one_line(capsys, _cli(workspace, tmp_path, "--use_peft", "true", "--lora_target_modules", "q_proj",
                                  "v_prj"))  # fmt: skip
    assert line.startswith("align train: lora_target_modules ['v_prj'] name no linear layer of this model; its linear "
                           "layers are [")  # fmt: skip
    assert "'q_proj'" in line and "'v_proj'" in line


def test_empty_prompts_are_refused_by_row_or_dropped_with_a_count(workspace, tmp_path, capsys, caplog):
    data = tmp_path / "train.jsonl"
    rows = [json.loads(x) for x in (workspace / "data" / "train.jsonl").read_text().splitlines()]
    for i in (3, 11):
        rows[i]["question"] = "  "
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = _one_line(capsys, _cli(workspace, tmp_path, "--dataset_files", str(data)))
    assert line == ("align train: 2 rows have an empty 'question' (rows 3, 11, counting from 0); fix the data or set "
                    "drop_empty_prompts true.")  # fmt: skip
    with caplog.at_level("WARNING"):
        trainer = build_trainer(
            config(workspace, tmp_path, "--dataset_files", str(data), "--drop_empty_prompts", "true")
        )
    assert len(trainer.train_dataset) == len(rows) - 2
    assert "dropped 2 rows with an empty prompt (drop_empty_prompts): rows 3, 11" in caplog.text


def test_align_plan_tries_the_hub_once_and_advises_on_every_phase_that_does_not_fit():
    import sys
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "align.cli", "plan", "recipes/llada-8b-instruct/grpo/gsm8k_d1.yaml",
                           "--gpu-memory", "16"], capture_output=True, text=True, cwd=REPO, env=env)  # fmt: skip
    # a hang guard (6 s idle here; the hub retries this test was written against took ~46 s idle, and an
    # oversubscribed machine stretches start-up several-fold)
    assert time.monotonic() - start < 300
    assert (
        proc.stdout.splitlines()[0]
        == "hub unreachable: using the published shape of GSAI-ML/LLaDA-8B-Instruct"
    )
    misfit = [line for line in proc.stdout.splitlines() if line.startswith("does not fit: ")]
    assert proc.returncode == 1 and len(misfit) >= 2, proc.stdout
    assert all(" phase needs about " in line for line in misfit)


def test_wall_s_continues_across_a_resume(workspace, tmp_path):
    from align.callbacks import WallClock

    first = build_trainer(config(workspace, tmp_path, *COMMON, "--max_steps", "2"))
    first.add_callback(WallClock())
    first.train()
    before = [h["wall_s"] for h in first.state.log_history if "wall_s" in h and "loss" in h]
    resumed = build_trainer(config(workspace, tmp_path, *COMMON, "--max_steps", "4"))
    resumed.add_callback(WallClock())
    resumed.train(resume_from_checkpoint="true")
    after = [h["wall_s"] for h in resumed.state.log_history if "wall_s" in h and "loss" in h]
    assert len(after) == 4 and after[:2] == before and after == sorted(after) and after[2] >= before[-1]


def test_generate_says_its_protocol_and_shows_progress_and_align_has_a_version():
    import sys

    proc = subprocess.run([sys.executable, "-m", "align.cli", "generate", "--model", "recipes/tiny/model", "--protocol",
                           "tiny", "--prompt", "12+34=", "--device", "cpu", "--dtype", "float32"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("align generate: protocol tiny: gen_length 8, block_length 8, steps 8, temperature 0, remasking "
            "low_confidence, threshold None, cache None, chat_template False") in proc.stderr  # fmt: skip
    assert "decoding: 100%" in proc.stderr and "1/1" in proc.stderr
    version = subprocess.run([sys.executable, "-m", "align.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("align ")
    helped = subprocess.run(
        [sys.executable, "-m", "align.cli", "eval", "--help"], capture_output=True, text=True
    )
    assert "built-in tasks: countdown, gsm8k, humaneval, math500, mbpp, sudoku" in helped.stdout
    assert "  llada: gen_length 256, block_length 32, steps 256, temperature 0" in helped.stdout


def test_report_held_out_points_carry_intervals_from_the_logged_counts(tmp_path):
    from align.eval import report

    runs = [{"label": "grpo", "kind": "train", "history": [
        {"step": 1, "reward": 0.1}, {"step": 5, "eval_tiny/accuracy": acc, "eval_tiny/n": 200}]} for acc in (0.4, 0.5)]  # fmt: skip
    panels = report.training_panels(runs)
    assert [keys for key, _, _, keys in panels if key == "eval_*"] == [
        ["eval_tiny/accuracy"]
    ]  # n is no curve
    assert report._held_out_interval(runs, "eval_tiny/accuracy", "step", 5) == report.wilson(0.45, 400)
    assert report._held_out_interval(runs, "eval_tiny/accuracy", "step", 1) is None
    report.write_report(runs, str(tmp_path))
    assert (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_zero2_checkpoint_missing_one_ranks_shard_is_skipped(workspace, tmp_path):
    """2-process ZeRO-2 saving every step: the newest checkpoint loses rank 1's optimizer shard (what a node
    dying mid-save leaves); resume true takes the one before and ends at the uninterrupted run's parameters."""
    accelerate = os.path.join(REPO, "recipes", "accelerate", "zero2.yaml")
    env = {"DS_ACCELERATOR": "cpu"}
    extra = ("--max_steps", "3")
    _, straight = _launch(workspace, tmp_path / "straight", accelerate, env, *extra)
    saving = (*extra, "--save_strategy", "steps", "--save_steps", "1")
    _launch(workspace, tmp_path / "cut", accelerate, env, *saving)
    out = tmp_path / "cut" / "out"
    shards = [
        p
        for p in (out / "checkpoint-3").rglob("*")
        if p.is_file() and ("rank_1" in p.name or "rank1" in p.name)
    ]
    assert shards, sorted(p.name for p in (out / "checkpoint-3").rglob("*"))
    shards[0].unlink()
    assert "is missing" in checkpoint_problem(str(out / "checkpoint-3"))
    for name in ("model.safetensors", "trainer_state.json"):  # the finished run's own outputs
        (out / name).unlink(missing_ok=True)
    _, resumed = _launch(
        workspace, tmp_path / "cut", accelerate, env, *saving, "--resume_from_checkpoint", "true"
    )
    worst = max((p - resumed.state_dict()[n]).abs().max().item() for n, p in straight.state_dict().items())
    assert worst < 1e-6, worst


# One change from each class of what a run computes (rollout, sampler, estimator, loss, rewards, batch
# arithmetic, optimisation, seed, model): a resumed run refuses each, naming it with its old and new value.
FINGERPRINT_CHANGES = {
    "learning_rate": (("--learning_rate", "0.25"), "learning_rate 0.5 -> 0.25"),
    "lr_scheduler_type": (("--lr_scheduler_type", "constant"), 'lr_scheduler_type "linear" -> "constant"'),
    "num_generations": (("--num_generations", "8"), "num_generations 4 -> 8"),
    "per_device_train_batch_size": (
        ("--per_device_train_batch_size", "4"),
        "per_device_train_batch_size 8 -> 4",
    ),
    "temperature": (("--temperature", "0.7"), "temperature 1.0 -> 0.7"),
    "diffusion_steps": (("--diffusion_steps", "4"), "diffusion_steps 8 -> 4"),
    "estimator": (("--estimator", "coupled"), 'estimator "one_step" -> "coupled"'),
    "num_mc_samples": (("--num_mc_samples", "2"), "num_mc_samples 1 -> 2"),
    "loss_type": (("--loss_type", "grpo"), 'loss_type "dapo" -> "grpo"'),
    "beta": (("--beta", "0.04"), "beta 0.0 -> 0.04"),
    "reward_funcs": (("--reward_funcs", f"{REWARDS}:ones_fraction", "answer_tag_format"), "reward_funcs ["),
    "reward_weights": (("--reward_weights", "2.0"), "reward_weights null -> [2.0]"),
    "scale_rewards": (("--scale_rewards", "none"), 'scale_rewards "group" -> "none"'),
    "seed": (("--seed", "4"), "seed 3 -> 4"),
    "mask_token_id": (("--mask_token_id", "2"), "mask_token_id null -> 2"),
}


def test_a_resumed_run_refuses_each_changed_field_and_accepts_it_on_purpose(workspace, tmp_path, caplog):
    from align.checkpoints import resolve_resume
    from align.fingerprint import FILE, check_resume, run_fields

    first = build_trainer(config(workspace, tmp_path, *COMMON, "--max_steps", "1"))
    first.train()
    checkpoint = str(tmp_path / "out" / "checkpoint-1")
    saved = json.load(open(os.path.join(checkpoint, FILE)))
    assert saved["step"] == 1 and saved["fields"]["learning_rate"] == 0.5 and len(saved["sha256"]) == 64
    assert checkpoint_problem(checkpoint) is None  # the fingerprint is one of the manifest's files
    assert resolve_resume(str(tmp_path / "out"), "true") == checkpoint
    # the same recipe (a longer run is not a change) resumes without a word
    same = config(workspace, tmp_path, *COMMON, "--max_steps", "5")
    assert check_resume(checkpoint, run_fields(same, first.spec), None) == []
    for name, (argv, shown) in FINGERPRINT_CHANGES.items():
        changed = run_fields(config(workspace, tmp_path, *COMMON, *argv), first.spec)
        with pytest.raises(UsageError) as refused:
            check_resume(checkpoint, changed, None)
        text = str(refused.value)
        assert text.startswith(
            f"resume from {checkpoint}: this run's recipe differs from the checkpoint's: "
        ), name
        assert shown in text and name in text.split("--allow_changed ")[1].split(" (or all)")[0].split(), text
        assert "\n" not in text
    # the data file's content is part of the identity
    data = tmp_path / "train.jsonl"
    data.write_text((workspace / "data" / "train.jsonl").read_text())
    moved = run_fields(config(workspace, tmp_path, *COMMON, "--dataset_files", str(data)), first.spec)
    with pytest.raises(UsageError, match="dataset_files "):
        check_resume(checkpoint, moved, None)
    data.write_text(data.read_text().replace("1", "2"))
    edited = run_fields(config(workspace, tmp_path, *COMMON, "--dataset_files", str(data)), first.spec)
    with pytest.raises(UsageError, match="dataset_files_identity "):
        check_resume(checkpoint, edited, ["dataset_files"])
    with pytest.raises(UsageError, match="allow_changed learning_rat: no such fingerprint field"):
        check_resume(checkpoint, changed, ["learning_rat"])
    # through the trainer: refused before any step, then accepted on purpose and recorded
    with pytest.raises(UsageError, match=r"learning_rate 0\.5 -> 0\.25"):
        build_trainer(config(workspace, tmp_path, *COMMON, "--learning_rate", "0.25")).train(
            resume_from_checkpoint="true"
        )
    assert not (tmp_path / "out" / "checkpoint-2").exists()
    accepted = build_trainer(config(workspace, tmp_path, *COMMON, "--learning_rate", "0.25", "--max_steps", "2",
                                    "--allow_changed", "learning_rate"))  # fmt: skip
    with caplog.at_level("WARNING"):
        accepted.train(resume_from_checkpoint="true")
    assert "with changed recipe values (allow_changed): learning_rate 0.5 -> 0.25" in caplog.text
    later = json.load(open(tmp_path / "out" / "checkpoint-2" / FILE))
    assert later["fields"]["learning_rate"] == 0.25
    assert later["accepted"] == [{"step": 1, "changes": {"learning_rate": [0.5, 0.25]}}]


def test_a_flipped_byte_in_any_file_of_a_checkpoint_is_caught_on_resume(workspace, tmp_path, straight):
    """Every file of a checkpoint (weights, optimizer, scheduler, RNG, trainer state, the rollout buffer, the
    fingerprint...) has its checksum in the manifest: one flipped byte, size unchanged, and resume skips that
    checkpoint with one line, or refuses it when named."""
    from align.checkpoints import resolve_resume

    build_trainer(config(workspace, tmp_path, *COMMON)).train()
    out = tmp_path / "out"
    manifest = json.load(open(out / "checkpoint-3" / MANIFEST))
    names = sorted(manifest["files"])
    assert manifest["checksums"]["algorithm"] in ("xxh3_128", "blake2b")
    assert sorted(manifest["checksums"]["files"]) == names and len(names) >= 6
    for name in names:
        path = out / "checkpoint-3" / name
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        try:
            assert checkpoint_problem(str(out / "checkpoint-3")) is None  # sizes alone cannot tell
            why = checkpoint_problem(str(out / "checkpoint-3"), verify_content=True)
            assert why == (f"its file {name} does not match its {manifest['checksums']['algorithm']} checksum "
                           "(corrupted after writing)"), name  # fmt: skip
            said = []
            assert resolve_resume(str(out), "true", log=said.append) == str(out / "checkpoint-2")
            assert len(said) == 1 and f"skipped incomplete {out}/checkpoint-3 ({why})" in said[0]
            with pytest.raises(UsageError, match=re.escape(f"checkpoint-3 is incomplete: {why}")):
                resolve_resume(str(out), str(out / "checkpoint-3"))
        finally:
            path.write_bytes(original)
    resumed = build_trainer(config(workspace, tmp_path, *COMMON, "--max_steps", "3"))
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert resumed.state.global_step == 3 and _same(_params(resumed), straight)

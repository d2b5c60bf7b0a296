"""The GRPO trainer on a random-init tiny LLaDA (CPU): learning signal, ratios, resume, errors, processes."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import assert_same_training
from transformers import TrainerCallback

from align.cli import main
from align.config import load_config
from align.models import LLaDAModelLM
from align.train import build_trainer
from demos.tiny import build_tokenizer, tiny_config, write_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REWARDS = os.path.join(REPO, "tests", "fixtures", "tiny_rewards.py")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = LLaDAModelLM(tiny_config(d_model=32, n_layers=2, mlp_hidden_size=64))
    model.save_pretrained(root / "model")
    build_tokenizer().save_pretrained(root / "model")
    write_task(str(root / "data"), num_train=64, num_test=8)
    return root


def config(ws, tmp_path, *extra):
    argv = [
        "--model_name_or_path", str(ws / "model"), "--dataset_files", str(ws / "data" / "train.jsonl"),
        "--output_dir", str(tmp_path / "out"), "--use_chat_template", "false", "--max_completion_length", "8",
        "--block_length", "8", "--diffusion_steps", "8", "--num_generations", "4", "--temperature", "1.0",
        "--per_device_train_batch_size", "8", "--max_steps", "2", "--logging_steps", "1", "--dtype", "float32",
        "--reward_funcs", f"{REWARDS}:ones_fraction", "--report_to", "none", "--save_strategy", "no",
        "--learning_rate", "1e-3", "--use_cpu", "true", "--seed", "3",
    ]  # fmt: skip
    return load_config(None, argv + list(extra))


def logs(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_every_parameter_changes_and_reward_kl_logged(workspace, tmp_path):
    trainer = build_trainer(config(workspace, tmp_path, "--beta", "0.04", "--estimator", "coupled", "--report_to",
                                   "tensorboard", "--log_completions", "true"))  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    assert len(logs(trainer, "reward")) == 2 and len(logs(trainer, "kl")) == 2
    assert logs(trainer, "kl")[0] == pytest.approx(0.0, abs=1e-7)  # reference == policy before any update
    assert logs(trainer, "kl")[1] > 0
    for key in ("reward_std", "rewards/ones_fraction/mean", "frac_reward_zero_std", "completions/mean_length",
                "completions/clipped_ratio", "rollout/forward_passes", "rollout/full_passes", "rollout/tokens_per_s", "time/rollout_s",
                "time/reward_s", "time/logprob_s", "time/update_s", "clip_ratio/region_mean"):  # fmt: skip
        assert len(logs(trainer, key)) == 2, key
    assert logs(trainer, "rollout/forward_passes")[0] == 8 == logs(trainer, "rollout/full_passes")[0]
    samples = [json.loads(line) for line in open(tmp_path / "out" / "completions.jsonl")]
    assert {s["step"] for s in samples} == {1, 2} and {"prompt", "completion", "reward", "advantage"} <= set(
        samples[0]
    )
    # the same sample as a TensorBoard text table, one per logging step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run] = (tmp_path / "out" / "runs").iterdir()
    events = EventAccumulator(str(run)).Reload()
    tables = events.Tensors("completions/text_summary")
    assert [t.step for t in tables] == [1, 2]
    text = tables[0].tensor_proto.string_val[0].decode()
    assert "| prompt | completion | ones_fraction | advantage |" in text
    assert text.count("\n") == 1 + len([s for s in samples if s["step"] == 1])


def test_activation_checkpointing_recomputes_the_blocks(workspace, tmp_path):
    """The recipes' ``activation_checkpointing: true`` reaches the model (transformers before 5.2x names it
    gradient_checkpointing: align.config passes it on): backward re-runs each block, the update is the same."""
    params, counts = {}, {}
    calls = []
    for on in ("false", "true"):
        calls.clear()
        trainer = build_trainer(
            config(workspace, tmp_path / on, "--max_steps", "1", "--activation_checkpointing", on)
        )
        assert trainer.args.activation_checkpointing is (on == "true")
        # a hook on a block's first layer also sees its recomputation in backward (which stops early, after the
        # last saved tensor: a hook on its last layer would not)
        for block in trainer.model.model.transformer.blocks:
            block.q_proj.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
        trainer.train()
        counts[on] = sum(
            calls
        )  # block forwards with grad: the policy pass, plus its recomputation in backward
        params[on] = [p.detach().clone() for p in trainer.model.parameters()]
    assert counts["true"] == 2 * counts["false"] > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params["false"], params["true"], strict=True))


def test_completions_table_in_the_console(workspace, tmp_path, capsys):
    build_trainer(config(workspace, tmp_path, "--log_completions", "true", "--max_steps", "1")).train()
    out = capsys.readouterr().out
    assert "Step 1" in out and "ones_fraction" in out and "Advantage" in out
    capsys.readouterr()
    build_trainer(
        config(workspace, tmp_path, "--max_steps", "1", "--output_dir", str(tmp_path / "quiet"))
    ).train()
    assert "Advantage" not in capsys.readouterr().out  # TRL's default: no table
    assert not (tmp_path / "quiet" / "completions.jsonl").exists()


def test_ratio_is_one_at_first_inner_iteration_only(workspace, tmp_path):
    trainer = build_trainer(config(workspace, tmp_path, "--num_iterations", "2", "--max_steps", "4",
                                   "--estimator", "elbo", "--num_mc_samples", "2"))  # fmt: skip
    trainer.train()
    ratios = logs(trainer, "ratio/mean")
    assert ratios[0] == 1.0 and ratios[2] == 1.0  # iteration 0 of each rollout: same weights, same masks
    assert ratios[1] != 1.0 and ratios[3] != 1.0  # iteration 1: one update later, same masks
    assert len(logs(trainer, "time/rollout_s")) == 2  # two rollouts for four steps


JUSTGRPO = ("--loss_type", "justgrpo", "--estimator", "trace", "--block_length", "1")
TRACERL = ("--loss_type", "tracerl", "--estimator", "trace", "--trace_merge", "2")


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", JUSTGRPO, TRACERL])
def test_gradient_accumulation_matches_one_big_micro_batch(workspace, tmp_path, loss_type):
    # One rollout of 8 completions: one micro-batch of 8, or two of 4 accumulated; plain SGD shows any scale error.
    # justgrpo sums the micro-batches' gradients, each over the generation's nonzero-advantage rows; tracerl
    # divides by the passes of the window: both equal one big micro-batch.
    kind = ("--loss_type", loss_type) if isinstance(loss_type, str) else loss_type
    common = ("--max_steps", "1", "--optim", "sgd", "--learning_rate", "0.5", *kind, "--max_grad_norm", "0")
    whole = build_trainer(config(workspace, tmp_path / "a", *common))
    split = build_trainer(config(workspace, tmp_path / "b", *common, "--per_device_train_batch_size", "4",
                                 "--gradient_accumulation_steps", "2"))  # fmt: skip
    before = {n: p.detach().clone() for n, p in whole.model.named_parameters()}
    whole.train()
    split.train()
    a, b = dict(whole.model.named_parameters()), dict(split.model.named_parameters())
    assert any(not torch.equal(a[n], before[n]) for n in a)
    assert all(torch.allclose(a[n], b[n], atol=1e-6, rtol=1e-4) for n in a)


@pytest.mark.parametrize("extra", [
    ("--estimator", "coupled", "--num_mc_samples", "3"),  # on-policy, beta 0: no extra no-grad estimate
    ("--estimator", "elbo", "--num_mc_samples", "4", "--mc_chunk_size", "3", "--beta", "0.04", "--loss_type", "grpo"),
    ("--estimator", "coupled", "--num_mc_samples", "2", "--num_iterations", "2", "--max_steps", "2"),  # ratio != 1
    ("--estimator", "elbo", "--num_mc_samples", "3", "--loss_type", "wd1", "--activation_checkpointing", "true"),
    ("--estimator", "trace", "--trace_merge", "2", "--beta", "0.04"),  # 4 passes replaying the rollout's order
    ("--estimator", "coupled", "--num_mc_samples", "2", "--use_peft", "true", "--lora_r", "4", "--beta", "0.1",
     "--importance_sampling_level", "sequence"),
    # the losses that are not linear in the passes: SPG's EUBO (its own masks), BGPO and StableDRL off-policy
    ("--loss_type", "spg", "--estimator", "spg", "--block_length", "4", "--num_mc_samples", "2",
     "--spg_mix", "0.5", "--p_mask_prompt", "0.15"),
    ("--loss_type", "bgpo", "--estimator", "coupled", "--num_mc_samples", "2", "--num_iterations", "2",
     "--max_steps", "2"),
    ("--loss_type", "stabledrl_clip", "--estimator", "elbo", "--num_mc_samples", "2", "--num_iterations", "2",
     "--max_steps", "2", "--importance_sampling_level", "sequence"),
    ("--loss_type", "stabledrl", "--estimator", "spg", "--block_length", "4", "--num_mc_samples", "2",
     "--num_iterations", "2", "--max_steps", "2"),
    # the released methods' own estimates and losses, off-policy where they define it
    (*TRACERL, "--num_iterations", "2", "--max_steps", "2", "--mc_chunk_size", "2"),
    (*JUSTGRPO, "--mc_chunk_size", "3"),
    ("--loss_type", "espo", "--estimator", "espo", "--num_mc_samples", "2", "--num_iterations", "2",
     "--max_steps", "2", "--beta", "0.05", "--advantage_baseline", "leave_one_out"),
    ("--loss_type", "bnpo", "--estimator", "diffucoder", "--num_iterations", "2", "--max_steps", "2",
     "--beta", "0.01", "--advantage_baseline", "leave_one_out", "--scale_rewards", "none"),
])  # fmt: skip
def test_chunked_mc_backward_gives_the_joint_gradient(workspace, tmp_path, extra):
    """mc_backward chunked backpropagates pass by pass; with plain SGD the parameters after the step(s)
    show any difference from the joint gradient (lr 0.5: a 1e-6 parameter tolerance is a 2e-6 gradient one)."""
    common = ("--max_steps", "1", "--optim", "sgd", "--learning_rate", "0.5", "--max_grad_norm", "0", *extra)
    joint = build_trainer(config(workspace, tmp_path / "a", *common, "--mc_backward", "joint"))
    chunked = build_trainer(config(workspace, tmp_path / "b", *common, "--mc_backward", "chunked"))
    assert_same_training(joint, chunked)


def test_mc_backward_auto_is_chunked_when_an_estimate_has_more_passes_than_one_call(workspace, tmp_path):
    cases = [(("--estimator", "one_step"), "joint"), (("--estimator", "coupled"), "chunked"),
             (("--estimator", "coupled", "--mc_chunk_size", "2"), "joint"),
             (("--estimator", "elbo", "--num_mc_samples", "8", "--mc_chunk_size", "4"), "chunked")]  # fmt: skip
    for extra, mode in cases:
        assert config(workspace, tmp_path, *extra).mc_backward == mode, extra


def test_wd1_weighs_each_completion_within_its_own_group_whatever_the_row_order(workspace, tmp_path):
    """The rollout buffer is shuffled, so wd1's group softmax cannot be taken over neighbouring rows of a
    micro-batch: the weights are computed per prompt group before the shuffle and travel with their rows,
    so the loss does not depend on the order of the rows."""
    from align.logprob.estimators import MaskPlan

    trainer = build_trainer(config(workspace, tmp_path, "--loss_type", "wd1"))
    trainer.current_gradient_accumulation_steps = 1
    rows = next(iter(trainer.get_train_dataloader()))
    rollout = trainer.rollouts.run(rows, 0, trainer.state, trainer._metrics)
    batch = rollout.micro_batch(0, 0, trainer.args.steps_per_generation)
    assert batch.group_weights.abs().sum() > 0
    perm = torch.randperm(len(batch.ids), generator=torch.Generator().manual_seed(0))
    plan = batch.plan
    moved = dataclasses.replace(
        batch, **{k: getattr(batch, k)[perm] for k in ("ids", "attn", "mask", "advantages", "group_weights")},
        plan=MaskPlan(plan.masked[:, perm], plan.weights[:, perm], plan.num_samples),
    )  # fmt: skip
    with torch.no_grad():
        losses = [trainer.compute_loss(trainer.model, b).item() for b in (batch, moved)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5), losses


def test_lora_trains_only_the_adapter_with_adapter_disabled_reference(workspace, tmp_path):
    trainer = build_trainer(config(workspace, tmp_path, "--use_peft", "true", "--lora_r", "4", "--beta", "0.1",
                                   "--learning_rate", "1e-2", "--activation_checkpointing", "true"))  # fmt: skip
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    params = dict(trainer.model.named_parameters())
    assert all(not torch.equal(params[n], v) for n, v in trainable.items() if "lora_B" in n)
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert logs(trainer, "kl")[0] == pytest.approx(0.0, abs=1e-7) and logs(trainer, "kl")[1] > 0
    # `align export` merges the saved adapter into a full checkpoint with the same outputs.
    trainer.save_model(str(tmp_path / "adapter"))
    assert (
        main(
            [
                "export",
                "--model",
                str(workspace / "model"),
                "--adapter",
                str(tmp_path / "adapter"),
                "--output",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )  # fmt: skip  (keeps the float32 base's dtype)
    assert json.load(open(tmp_path / "merged" / "config.json"))["dtype"] == "float32"
    merged = LLaDAModelLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[0, 9, 10, 11, 15, 2, 2, 2]])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, trainer.model(input_ids=ids).logits, atol=1e-5)
    assert os.path.exists(tmp_path / "merged" / "tokenizer.json")


class _Crash(TrainerCallback):
    def on_log(self, args, state, control, **kwargs):  # after step 3 is logged, before it is checkpointed
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated kill")


VARIABLE = (
    "--variable_length",
    "true",
    "--estimator",
    "growing",
    "--max_completion_length",
    "16",
    "--block_length",
    "4",
    "--diffusion_steps",
    "16",
)  # fmt: skip (the cut canvases ride in the buffer)


@pytest.mark.parametrize("rollouts", [(), VARIABLE], ids=["fixed", "variable_length"])
def test_kill_and_resume_matches_uninterrupted_run(workspace, tmp_path, rollouts):
    # steps_per_generation 2 x num_iterations 2: checkpoint-2 falls in the middle of a rollout phase.
    common = ("--max_steps", "5", "--steps_per_generation", "2", "--per_device_train_batch_size", "4",
              "--num_iterations", "2", "--beta", "0.02", "--log_completions", "true", *rollouts)  # fmt: skip
    straight = build_trainer(config(workspace, tmp_path / "a", *common))
    straight.train()
    killed = build_trainer(
        config(workspace, tmp_path / "b", *common, "--save_strategy", "steps", "--save_steps", "2")
    )
    killed.add_callback(_Crash())
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert os.path.exists(tmp_path / "b" / "out" / "checkpoint-2" / "rollout_buffer_rank0.pt")
    resumed = build_trainer(
        config(workspace, tmp_path / "b", *common, "--save_strategy", "steps", "--save_steps", "2")
    )
    assert {json.loads(x)["step"] for x in open(tmp_path / "b" / "out" / "completions.jsonl")} == {1, 2, 3}
    resumed.train(
        resume_from_checkpoint="true"
    )  # what `--resume_from_checkpoint true` passes: the newest one
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert logs(resumed, "reward")[-1] == pytest.approx(logs(straight, "reward")[-1])
    # completions.jsonl: each step once (step 3, logged before the kill, is not repeated)
    rows = [[json.loads(x) for x in open(tmp_path / d / "out" / "completions.jsonl")] for d in ("a", "b")]
    assert [r["step"] for r in rows[1]] == [r["step"] for r in rows[0]] and rows[1] == rows[0]
    with pytest.raises(ValueError, match="holds no complete checkpoint-N folder"):
        build_trainer(config(workspace, tmp_path / "c", *common)).train(resume_from_checkpoint="true")


def test_missing_prompt_column_is_named(workspace, tmp_path):
    with pytest.raises(ValueError, match=r"prompt_column 'problem' .*'question'"):
        build_trainer(config(workspace, tmp_path, "--prompt_column", "problem"))


def test_raising_reward_names_function_and_sample(workspace, tmp_path):
    rows = [{"question": f"{'777' if i % 3 == 2 else '123'}+{i:03d}=", "answer": "0"} for i in range(16)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = build_trainer(config(workspace, tmp_path, "--dataset_files", str(data), "--reward_funcs",
                                   f"{REWARDS}:ones_fraction", f"{REWARDS}:explodes_on_777"))  # fmt: skip
    with pytest.raises(
        RuntimeError, match=r"'explodes_on_777' raised ZeroDivisionError: .* on sample \d+ \(prompt '777"
    ):
        trainer.train()


def test_wrong_length_reward_and_none_rewards(workspace, tmp_path):
    trainer = build_trainer(config(workspace, tmp_path, "--reward_funcs", f"{REWARDS}:wrong_length"))
    with pytest.raises(RuntimeError, match=r"'wrong_length' returned 1 values for 8 completions"):
        trainer.train()
    trainer = build_trainer(config(workspace, tmp_path, "--reward_funcs", f"{REWARDS}:ones_fraction",
                                   f"{REWARDS}:none_for_odd", "--max_steps", "1"))  # fmt: skip
    trainer.train()
    assert logs(trainer, "rewards/none_for_odd/mean") == [0.5]


@pytest.mark.parametrize("name,message", [
    ("nan_on_third", r"'nan_on_third' returned nan for sample 2 \(prompt '.*', completion '.*'\); stopped before any "
                     r"update\. Return a finite number, or None"),
    ("inf_on_first", r"'inf_on_first' returned -inf for sample 0 \(prompt "),
    ("numpy_nan", r"'numpy_nan' returned nan for sample 7 \(prompt "),
    ("as_dict", r"'as_dict' returned a dict \(keys \['score'\]\) for 8 completions; return a list with one float"),
])  # fmt: skip
def test_a_non_finite_or_dict_reward_stops_the_run_before_any_update(workspace, tmp_path, name, message):
    trainer = build_trainer(config(workspace, tmp_path, "--reward_funcs", f"{REWARDS}:ones_fraction",
                                   f"{REWARDS}:{name}"))  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(RuntimeError, match=message):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_reward_signals_kwargs_hint_all_none_warning_and_counters(workspace, tmp_path, caplog):
    trainer = build_trainer(config(workspace, tmp_path, "--reward_funcs", f"{REWARDS}:no_kwargs"))
    with pytest.raises(
        RuntimeError, match=r"'no_kwargs' raised TypeError: .*add \*\*kwargs to its signature"
    ):
        trainer.train()
    trainer = build_trainer(config(workspace, tmp_path, "--reward_funcs", f"{REWARDS}:counting",
                                   f"{REWARDS}:always_none", "--max_steps", "2"))  # fmt: skip
    trainer.train()
    assert logs(trainer, "rewards/counting/timeouts") == [2.0, 2.0]
    assert logs(trainer, "rewards/counting/retries") == [1.0, 1.0]
    assert logs(trainer, "frac_reward_zero_std") == [1.0, 1.0]  # every group's rewards are equal
    warned = [r for r in caplog.records if "returned None for every completion" in r.getMessage()]
    assert len(warned) == 1 and "'always_none'" in warned[0].getMessage()


def test_align_train_rejects_a_malformed_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1e-5\nnum_generation: 8\n")
    proc = subprocess.run(
        [sys.executable, "-m", "align.train", "--config", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr == (f"align train: {bad}: unknown config field 'num_generation'; did you mean num_generations "
                           "or num_iterations? `align train --help` lists the fields.\n")  # fmt: skip


def free_port() -> str:
    """A port the OS picked as free just now (a launch's rendezvous: accelerate's fixed default, 29500, meets any
    other job on the machine that uses it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _launch_command(workspace, tmp_path, accelerate_config, launch, *extra):
    launch = launch or ["--main_process_port", free_port()]  # one machine: a port of its own
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
        "--num_processes", "2", "--mixed_precision", "no", *launch, "-m", "align.train",
        "--model_name_or_path", str(workspace / "model"), "--dataset_files", str(workspace / "data" / "train.jsonl"),
        "--output_dir", str(tmp_path / "out"), "--use_chat_template", "false", "--max_completion_length", "8",
        "--block_length", "8", "--diffusion_steps", "8", "--num_generations", "4", "--per_device_train_batch_size",
        "4", "--max_steps", "2", "--logging_steps", "1", "--dtype", "float32", "--reward_funcs",
        f"{REWARDS}:ones_fraction", "--report_to", "none", "--save_strategy", "no", "--beta", "0.04",
        "--use_cpu", "true", "--optim", "sgd", "--learning_rate", "0.5", "--max_grad_norm", "0",
        "--estimator", "coupled", "--num_mc_samples", "2", *extra,
    ]  # fmt: skip


def _launch(workspace, tmp_path, accelerate_config, env_extra, *extra):
    cmd = _launch_command(workspace, tmp_path, accelerate_config, [], *extra)
    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, _child_failure(proc.stderr, tmp_path)
    return _finished_run(tmp_path)


def _child_failure(stderr: str, tmp_path) -> str:
    """What a failed 2-process run left: whether it got as far as saving, the C++ / faulthandler reports of a
    crashed rank (``terminate called``, ``what():``, ``Fatal Python error`` and the stacks after it; the
    launcher's own traceback would push them out of a plain tail) and the tail."""
    (tmp_path / "stderr.txt").write_text(stderr)
    lines = stderr.splitlines()
    marks = [i for i, line in enumerate(lines) if any(k in line for k in ("terminate called", "what():",
                                                                           "Fatal Python error", "Current thread"))]  # fmt: skip
    crash = "\n".join(lines[marks[0] : marks[0] + 60]) if marks else "(no crash report in stderr)"
    saved = (tmp_path / "out" / "trainer_state.json").exists()
    return f"saved: {saved}; full stderr in {tmp_path / 'stderr.txt'}\n{crash}\n...\n{stderr[-1500:]}"


def _finished_run(tmp_path):
    state = json.load(open(tmp_path / "out" / "trainer_state.json"))
    saved = LLaDAModelLM.from_pretrained(tmp_path / "out")
    return state, saved


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,env",
    [
        ("ddp", {"ACCELERATE_USE_CPU": "1"}),
        ("zero2", {"DS_ACCELERATOR": "cpu"}),
        ("zero3", {"DS_ACCELERATOR": "cpu"}),
    ],
)
def test_two_process_run(workspace, tmp_path, name, env):
    """Two processes under DDP / ZeRO-2 / ZeRO-3 train, gather their metrics, and backpropagating the Monte
    Carlo passes chunk by chunk (no all-reduce / no DeepSpeed step before the last chunk) gives the same
    parameters as the joint backward (plain SGD, so any gradient difference shows)."""
    accelerate_config = os.path.join(REPO, "recipes", "accelerate", f"{name}.yaml")
    state, saved = _launch(workspace, tmp_path / "joint", accelerate_config, env, "--mc_backward", "joint")
    _, chunked = _launch(workspace, tmp_path / "chunked", accelerate_config, env, "--mc_backward", "chunked")
    worst = max((p - chunked.state_dict()[n]).abs().max().item() for n, p in saved.state_dict().items())
    assert worst < 1e-5, worst
    initial = LLaDAModelLM.from_pretrained(workspace / "model")
    changed = [not torch.equal(p, initial.state_dict()[n]) for n, p in saved.state_dict().items()]
    assert all(changed)
    logged = [h for h in state["log_history"] if "reward" in h]
    assert [h["step"] for h in logged] == [1, 2] and all("kl" in h for h in logged)
    assert logged[0]["kl"] == pytest.approx(
        0.0, abs=1e-7
    )  # the reference equals the policy before any update
    # gathered over both processes: the token sum is the mean length times 2 x 4 completions (one process: 4)
    assert all(h["num_tokens"] == pytest.approx(8 * h["completions/mean_length"]) for h in logged), logged


@pytest.mark.slow
def test_variable_length_rollouts_under_zero3(workspace, tmp_path):
    """Two ZeRO-3 processes with variable-length rollouts: the sampler runs on the gathered policy (no collective
    inside it), so each rank's rows may stop at different blocks; the growing estimate runs num_mc_samples
    passes per micro-batch on every rank whatever its lengths, so the sharded forwards stay in step. 3 steps
    finish (a mismatch would hang until the timeout) and train every parameter."""
    accelerate_config = os.path.join(REPO, "recipes", "accelerate", "zero3.yaml")
    state, saved = _launch(workspace, tmp_path, accelerate_config, {"DS_ACCELERATOR": "cpu"}, "--max_steps", "3",
                           "--temperature", "1.0", *VARIABLE)  # fmt: skip
    logged = [h for h in state["log_history"] if "reward" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    assert all(1 <= h["rollout/forward_passes"] <= 16 for h in logged)  # at most 4 blocks x 4 steps
    initial = LLaDAModelLM.from_pretrained(workspace / "model")
    assert all(not torch.equal(p, initial.state_dict()[n]) for n, p in saved.state_dict().items())


# What a failed meeting of the two launches looks like (the set-up, not the code under test): retried.
_RENDEZVOUS_FAILURES = ("likely a timeout", "DistNetworkError", "Connection refused", "EADDRINUSE",
                        "address already in use", "RendezvousTimeoutError")  # fmt: skip


def _launch_two_machines(workspace, tmp_path, name, env_extra, *extra):
    """Two accelerate launches, machine ranks 0 and 1 with one process each, meeting on 127.0.0.1 at a port
    the OS chose. A rendezvous that fails to form (a busy machine, a port taken between choosing and binding)
    is retried up to twice with a fresh port; any other failure fails the test at once."""
    import shutil
    import socket

    config = os.path.join(REPO, "recipes", "accelerate", f"multinode_{name}.yaml")
    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    for attempt in range(3):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        procs = [
            subprocess.Popen(_launch_command(workspace, tmp_path, config, ["--num_machines", "2", "--machine_rank",
                             str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port], *extra),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
            for rank in (0, 1)
        ]  # fmt: skip
        outputs = [p.communicate(timeout=900)[0] for p in procs]
        if all(p.returncode == 0 for p in procs):
            return _finished_run(tmp_path)
        text = outputs[0] + outputs[1]
        if attempt == 2 or not any(sign in text for sign in _RENDEZVOUS_FAILURES):
            raise AssertionError(outputs[0][-2000:] + outputs[1][-2000:])
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
    raise AssertionError("unreachable")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,env",
    [
        ("ddp", {"ACCELERATE_USE_CPU": "1"}),
        ("zero2", {"DS_ACCELERATOR": "cpu"}),
        ("zero3", {"DS_ACCELERATOR": "cpu"}),
    ],  # fmt: skip
)
def test_two_machine_ranks_on_loopback_train_like_two_processes_on_one_machine(
    workspace, tmp_path, name, env
):
    """The multi-node launch configs: 2 machine ranks x 1 process reach the same parameters and logs as 2
    processes on one machine, and leave a model that loads (ZeRO-3 too: its shards gathered at the end); under DDP the step-1 checkpoint of a two-machine run, resumed by a fresh launch
    of both ranks, ends at the uninterrupted run's parameters."""
    one_state, one = _launch(
        workspace, tmp_path / "one", os.path.join(REPO, "recipes", "accelerate", f"{name}.yaml"), env
    )
    two_state, two = _launch_two_machines(workspace, tmp_path / "two", name, env)
    worst = max((p - two.state_dict()[n]).abs().max().item() for n, p in one.state_dict().items())
    assert worst < 1e-6, worst
    rewards = lambda state: [h["reward"] for h in state["log_history"] if "reward" in h]  # noqa: E731
    assert rewards(one_state) == rewards(two_state) and len(rewards(one_state)) == 2
    if name == "ddp":  # a two-machine run saving at step 1, and a restart of both ranks from that checkpoint
        saving = ("--save_strategy", "steps", "--save_steps", "1")
        _launch_two_machines(workspace, tmp_path / "saving", name, env, *saving)
        checkpoint = str(tmp_path / "saving" / "out" / "checkpoint-1")
        _, resumed = _launch_two_machines(workspace, tmp_path / "resumed", name, env, *saving,
                                          "--resume_from_checkpoint", checkpoint)  # fmt: skip
        worst = max((p - resumed.state_dict()[n]).abs().max().item() for n, p in one.state_dict().items())
        assert worst < 1e-6, worst


def test_lora_never_wraps_the_untied_lm_head(tmp_path):
    from align.config import GRPOConfig
    from align.runner import load_policy

    LLaDAModelLM(tiny_config(d_model=32, n_layers=2, mlp_hidden_size=64, weight_tying=False)).save_pretrained(
        tmp_path
    )
    config = GRPOConfig(output_dir=str(tmp_path), model_name_or_path=str(tmp_path), dataset_files=["x.jsonl"],
                        use_peft=True, dtype="float32", use_cpu=True, max_completion_length=8, block_length=8,
                        diffusion_steps=8, num_generations=2, per_device_train_batch_size=2)  # fmt: skip
    model, ref = load_policy(config)
    wrapped = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert ref is None and len(wrapped) == 2 * 7  # 7 target names per block, 2 blocks
    assert all(".blocks." in n for n in wrapped)  # model.transformer.ff_out (the head) is left alone


def test_eval_during_training_logs_scores_and_keeps_the_best_checkpoint(tmp_path, capsys):
    """eval_tasks on the committed tiny model: scores at every eval step, equal to `align eval` of that
    checkpoint; load_best_model_at_end restores the best one."""
    tiny = os.path.join(REPO, "recipes", "tiny")
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", f"{tiny}/model", "--dataset_files", f"{tiny}/data/train.jsonl",
        "--output_dir", str(out), "--max_steps", "6",
        "--per_device_train_batch_size", "16", "--learning_rate", "5e-5", "--logging_steps", "1",
        "--report_to", "none", "--eval_tasks", f"tiny={tiny}/data/test.jsonl", "--eval_limit", "60",
        "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--metric_for_best_model",
        "eval/tiny/accuracy", "--load_best_model_at_end", "true", "--per_device_eval_batch_size", "32",
    ]  # fmt: skip
    trainer = build_trainer(load_config(os.path.join(tiny, "grpo.yaml"), argv))
    trainer.train()
    scores = {
        h["step"]: h["eval_tiny/accuracy"] for h in trainer.state.log_history if "eval_tiny/accuracy" in h
    }
    assert sorted(scores) == [2, 4, 6]
    loops = {
        h["step"]: h["eval_tiny/loop_rate"] for h in trainer.state.log_history if "eval_tiny/accuracy" in h
    }
    assert sorted(loops) == [2, 4, 6]  # the loop rates are logged beside the score
    best = max(scores, key=lambda s: (scores[s], -s))  # the Trainer keeps the first of equal scores
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{best}")
    assert trainer.state.best_metric == scores[best]
    saved = LLaDAModelLM.from_pretrained(out / f"checkpoint-{best}")
    for (name, p), q in zip(trainer.model.named_parameters(), saved.parameters()):
        assert torch.equal(p.detach(), q), name  # the best checkpoint's weights are loaded at the end
    # the in-training score is what `align eval` gives that checkpoint under the same settings
    step = max(scores)
    capsys.readouterr()
    assert main(["eval", "--model", str(out / f"checkpoint-{step}"), "--tasks", f"tiny={tiny}/data/test.jsonl",
                 "--protocol", "tiny", "--limit", "60", "--dtype", "float32", "--output", str(tmp_path / "e")]) == 0  # fmt: skip
    results = json.load(open(tmp_path / "e" / "results.json"))["tasks"]["tiny"]
    assert results["accuracy"] == scores[step] and results["loop_rate"] == loops[step]


def test_eval_fields_without_tasks_are_refused(workspace, tmp_path):
    with pytest.raises(ValueError, match="eval_strategy 'steps' needs eval_tasks"):
        config(workspace, tmp_path, "--eval_strategy", "steps")
    with pytest.raises(ValueError, match="load_best_model_at_end needs metric_for_best_model"):
        config(workspace, tmp_path, "--eval_tasks", "x=y.jsonl", "--load_best_model_at_end", "true")


def test_completions_table_goes_to_wandb_when_asked(workspace, tmp_path, monkeypatch):
    """wandb is optional (not installed here): a stand-in module records what the trainer logs."""
    import importlib.machinery
    import types

    logged = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.run, fake.log, fake.Table = object(), logged.append, lambda dataframe: dataframe
    monkeypatch.setitem(sys.modules, "wandb", fake)
    trainer = build_trainer(config(workspace, tmp_path, "--log_completions", "true", "--max_steps", "1"))
    trainer.args.report_to = ["wandb"]  # after construction: no WandbCallback needed
    trainer.train()
    [entry] = logged
    table = entry["completions"]
    assert list(table.columns) == [
        "step",
        "prompt",
        "completion",
        "reward",
        "advantage",
        "ones_fraction",
        "loop",
    ]
    assert len(table) == 4 and set(table["step"]) == {1}


def test_a_training_step_raises_no_known_library_warnings(workspace, tmp_path):
    import warnings

    trainer = build_trainer(config(workspace, tmp_path, "--max_steps", "1", "--beta", "0.04"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "is_gradient_checkpointing" in m], messages
    assert (
        trainer.args.ddp_find_unused_parameters is False
    )  # no DDP search for unused parameters (nor its warning)


def test_no_grad_passes_run_one_micro_batch_of_rows_at_a_time(workspace, tmp_path):
    from align.logprob import make_plan

    trainer = build_trainer(config(workspace, tmp_path, "--per_device_train_batch_size", "4",
                                   "--steps_per_generation", "3", "--estimator", "coupled", "--num_mc_samples", "2"))  # fmt: skip
    ids = torch.randint(3, 17, (12, 14), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    canvas = torch.zeros_like(ids)
    canvas[:, 6:] = 1
    plan = make_plan("coupled", canvas, num_samples=2, generator=torch.Generator().manual_seed(1))
    calls = []
    model = trainer.model

    def count(module, args, kwargs):
        calls.append((args[0] if args else kwargs["input_ids"]).shape[0])

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        with torch.no_grad():
            chunked = trainer.rollouts._by_rows(model, ids, attn, plan)
            calls_chunked, calls[:] = list(calls), []
            whole = trainer._passes(model, ids, attn, plan)
    finally:
        hook.remove()
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert max(calls_chunked) == 4 * trainer.args.mc_chunk_size and len(calls_chunked) == 3 * plan.num_passes


def test_a_rollout_engine_of_ones_own_plugs_in_without_a_trainer_change(workspace, tmp_path):
    """The seam a server backend uses: an engine registered from outside the library receives the policy
    before each rollout phase (as a server receives weights) and the recipe's sampler settings, and a run
    through it (decoding the weights it was sent with the in-process sampler) trains exactly like the
    default engine."""
    from align.data import load_rows
    from align.models import family_spec, load_tokenizer
    from align.rollout.engine import ENGINES, InProcessEngine, RolloutEngine, build_engine, register_engine
    from align.runner import load_policy
    from align.trainer import DiffusionGRPOTrainer

    calls = []

    @register_engine("recording")
    class Recording(RolloutEngine):
        def __init__(self, inner):
            self.inner = inner

        def sync_weights(self, model):
            calls.append(("sync", type(model).__name__))
            self.inner.sync_weights(model)

        def generate(self, prompt_ids, attention_mask, settings, *, generator=None, on_block=None, **hooks):
            calls.append(
                ("generate", prompt_ids.shape[0], settings.gen_length, settings.steps, settings.temperature)
            )
            return self.inner.generate(prompt_ids, attention_mask, settings, generator=generator, **hooks)

    try:
        default = build_trainer(config(workspace, tmp_path / "a"))
        default.train()
        cfg = config(workspace, tmp_path / "b")
        model, ref = load_policy(cfg)
        tokenizer = load_tokenizer(cfg.model_name_or_path)
        engine = build_engine("recording", inner=InProcessEngine(family_spec(model, tokenizer), model=model))
        trainer = DiffusionGRPOTrainer(
            model,
            args=cfg,
            train_dataset=load_rows(cfg),
            processing_class=tokenizer,
            ref_model=ref,
            engine=engine,
        )
        trainer.train()
    finally:
        ENGINES.pop("recording", None)
    assert calls == [("sync", "LLaDAModelLM"), ("generate", 8, 8, 8, 1.0)] * 2
    assert logs(trainer, "loss") == logs(default, "loss") and logs(trainer, "reward") == logs(
        default, "reward"
    )


def test_lora_starts_from_the_same_adapter_in_two_processes_with_the_same_seed(workspace, tmp_path):
    """Two processes, one of which has drawn from the global RNG first: the same seed gives the same lora_A
    (it once came from whatever state the process's RNG was in); another seed gives another."""
    import subprocess
    import sys

    code = (
        "import sys, torch\nfrom align.config import load_config\nfrom align.runner import load_policy\n"
        "torch.manual_seed(int(sys.argv[1])); torch.rand(int(sys.argv[1]) + 1)\n"
        "config = load_config(None, sys.argv[3:])\n"
        "model, _ = load_policy(config)\n"
        "print(sum(float(p.double().sum()) * (i + 1) for i, (n, p) in enumerate(sorted(model.named_parameters())) "
        "if 'lora_A' in n))\n"
    )
    argv = ["--model_name_or_path", str(workspace / "model"), "--dataset_files", str(workspace / "data" / "train.jsonl"),
            "--output_dir", str(tmp_path / "out"), "--use_peft", "true", "--lora_r", "4", "--dtype", "float32",
            "--use_cpu", "true", "--report_to", "none"]  # fmt: skip

    def adapter(noise: int, seed: int) -> str:
        proc = subprocess.run([sys.executable, "-c", code, str(noise), "-", *argv, "--seed", str(seed)],
                              capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1]

    assert adapter(1, 7) == adapter(5, 7) != adapter(1, 8)


def test_the_python_api_takes_trls_signature_and_trains_as_the_cli_does(workspace, tmp_path):
    """``from align import DiffusionGRPOTrainer``: TRL's argument names and order (model as a path,
    reward_funcs callables, args, train_dataset), one step equal to the recipe path's."""
    import importlib.util

    import align
    from align.data import load_rows
    from align.errors import UsageError

    spec = importlib.util.spec_from_file_location("tiny_rewards", REWARDS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ones_fraction = module.ones_fraction

    cfg = config(workspace, tmp_path, "--max_steps", "1")
    via_cli = build_trainer(cfg)
    via_cli.train()
    api = align.DiffusionGRPOTrainer(str(workspace / "model"), [ones_fraction], config(workspace, tmp_path, "--max_steps", "1"),
                                     load_rows(cfg))  # fmt: skip
    api.train()
    assert all(
        torch.equal(p, dict(via_cli.model.named_parameters())[n]) for n, p in api.model.named_parameters()
    )
    assert logs(api, "reward") == logs(via_cli, "reward")
    with pytest.raises(UsageError, match="eval_dataset"):
        align.DiffusionGRPOTrainer(
            str(workspace / "model"), args=cfg, train_dataset=load_rows(cfg), eval_dataset=[1]
        )
    from peft import LoraConfig

    lora = align.DiffusionGRPOTrainer(str(workspace / "model"), args=cfg, train_dataset=load_rows(cfg),
                                      peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    assert any("lora_A" in n for n, _ in lora.model.named_parameters())

"""align dpo: the DPO losses against their formulas, VRPO's shared masks, the chunked gradient, bad rows,
resume, and two processes (DDP / ZeRO-2 / ZeRO-3) on a random-init tiny LLaDA (CPU)."""

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import assert_same_training
from test_trainer import free_port
from transformers import TrainerCallback

from align.config import DPOConfig, load_config
from align.dpo import build_trainer
from align.losses import dpo_loss
from align.models import LLaDAModelLM
from demos.tiny import build_tokenizer, tiny_config, write_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_pairs(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    torch.manual_seed(0)
    LLaDAModelLM(tiny_config(d_model=32, n_layers=2, mlp_hidden_size=64)).save_pretrained(root / "model")
    build_tokenizer().save_pretrained(root / "model")
    task = write_task(str(root / "data"), num_train=32, num_test=1)
    rows = [json.loads(line) for line in open(task["train"])]
    pairs = [{"prompt": r["question"], "chosen": r["completion"], "rejected": f"<answer>{int(r['answer']) + 1}</answer>"}
             for r in rows]  # fmt: skip
    write_pairs(root / "pairs.jsonl", pairs)
    return root


def config(ws, out, *extra):
    argv = [
        "--model_name_or_path", str(ws / "model"), "--dataset_files", str(ws / "pairs.jsonl"), "--output_dir", str(out),
        "--use_chat_template", "false", "--max_prompt_length", "16", "--max_completion_length", "8",
        "--num_mc_samples", "4", "--per_device_train_batch_size", "4", "--max_steps", "2", "--logging_steps", "1",
        "--dtype", "float32", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true", "--seed", "1",
        "--learning_rate", "1e-3",
    ]  # fmt: skip
    return load_config(None, argv + list(extra), cls=DPOConfig, prog="align dpo")


def logs(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def _trl_116_reference(loss_type, pc, pr, rc, rr, lc, lr, beta, s):
    """TRL 1.16 ``DPOTrainer._compute_loss`` (f-divergence reverse_kl), written out here independently:
    sigmoid reads no label smoothing there; robust divides by 1 - 2s; cdpo is TRL 0.x's smoothed sigmoid."""
    d = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        return -torch.log(torch.sigmoid(beta * d))
    if loss_type == "robust":
        return (-(1 - s) * torch.log(torch.sigmoid(beta * d)) + s * torch.log(torch.sigmoid(-beta * d))) / (
            1 - 2 * s
        )
    if loss_type == "cdpo":
        return -(1 - s) * torch.log(torch.sigmoid(beta * d)) - s * torch.log(torch.sigmoid(-beta * d))
    if loss_type == "hinge":
        return torch.clamp(1 - beta * d, min=0)
    return ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2  # ipo on per-token averages


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust", "cdpo"])
def test_dpo_losses_equal_trl_116_in_value_and_gradient(loss_type):
    torch.manual_seed(0)
    logps = (torch.randn(6, dtype=torch.float64) * 3).requires_grad_()
    ref = torch.randn(6, dtype=torch.float64) * 3
    lengths = torch.tensor([3.0, 5, 2, 4, 4, 1], dtype=torch.float64)
    beta, s = 0.3, 0.1
    loss, metrics = dpo_loss(logps, ref, lengths, beta=beta, loss_type=loss_type, label_smoothing=s)
    (grad,) = torch.autograd.grad(loss, logps)
    other = logps.detach().clone().requires_grad_()
    (pc, pr), (rc, rr), (lc, lr) = other.chunk(2), ref.chunk(2), lengths.chunk(2)
    expected = _trl_116_reference(loss_type, pc, pr, rc, rr, lc, lr, beta, s).mean()
    (expected_grad,) = torch.autograd.grad(expected, other)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    if loss_type == "sigmoid":  # the smoothing that used to be applied here changes the gradient
        smoothed = _trl_116_reference("cdpo", pc, pr, rc, rr, lc, lr, beta, s).mean()
        assert (torch.autograd.grad(smoothed, other)[0] - expected_grad).abs().max() > 1e-3


def test_dpo_loss_metrics():
    torch.manual_seed(0)
    logps, ref = torch.randn(6) * 3, torch.randn(6) * 3
    lengths = torch.tensor([3.0, 5, 2, 4, 4, 1])
    (pc, pr), (rc, rr) = logps.chunk(2), ref.chunk(2)
    delta = (pc - rc) - (pr - rr)
    beta = 0.3
    loss, metrics = dpo_loss(logps, ref, lengths, beta=beta)
    torch.testing.assert_close(metrics["rewards/margins"], beta * delta)
    assert metrics["rewards/accuracies"].tolist() == (delta > 0).float().tolist()
    torch.testing.assert_close(metrics["logps/chosen"], pc)
    with pytest.raises(ValueError, match="loss_type 'kto'"):
        dpo_loss(logps, ref, lengths, loss_type="kto")


@pytest.mark.parametrize("extra", [(), ("--use_peft", "true", "--lora_r", "4")])
def test_first_step_loss_is_log2_with_shared_masks(workspace, tmp_path, extra):
    """Before any update the policy is the reference; VRPO's shared masks make every log-ratio exactly 0."""
    trainer = build_trainer(config(workspace, tmp_path, *extra))
    trainer.train()
    assert logs(trainer, "loss")[0] == pytest.approx(math.log(2), abs=1e-6)
    assert logs(trainer, "rewards/margins")[0] == 0.0 and logs(trainer, "rewards/margins")[1] != 0.0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert len(logs(trainer, key)) == 2, key


@pytest.mark.parametrize("extra", [
    ("--loss_type", "cdpo", "--label_smoothing", "0.1"),
    ("--loss_type", "ipo", "--mc_chunk_size", "3", "--share_masks", "false"),
    ("--loss_type", "hinge", "--use_peft", "true", "--lora_r", "4", "--gradient_accumulation_steps", "2"),
])  # fmt: skip
def test_chunked_gradient_equals_the_joint_one(workspace, tmp_path, extra):
    common = ("--optim", "sgd", "--learning_rate", "0.5", "--max_grad_norm", "0", "--beta", "2.0", *extra)
    joint = build_trainer(config(workspace, tmp_path / "a", *common, "--mc_backward", "joint"))
    chunked = build_trainer(config(workspace, tmp_path / "b", *common, "--mc_backward", "chunked"))
    assert_same_training(joint, chunked)


def loss_spread(trainer, batch, draws: int) -> torch.Tensor:
    """Variance of the DPO loss estimate over fresh mask draws for one fixed batch."""
    values = []
    trainer.current_gradient_accumulation_steps = 1  # set by train(); _loss divides by it
    with torch.no_grad():
        for step in range(draws):
            trainer.state.global_step = step
            plan, ref = trainer._pair_inputs(batch)
            logps = trainer._estimate(trainer.model, batch["ids"], batch["attn"], plan)
            values.append(trainer._loss(logps, ref, batch))
    return torch.stack(values).var()


def test_shared_masks_cut_the_variance_of_the_loss_estimate(workspace, tmp_path):
    """VRPO's claim on a tiny model: with the policy moved away from the reference, the DPO loss estimated
    with shared masks varies far less across mask draws than with independent ones."""
    variances = {}
    for share in ("true", "false"):
        trainer = build_trainer(
            config(workspace, tmp_path / share, "--share_masks", share, "--num_mc_samples", "2")
        )
        torch.manual_seed(0)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        variances[share] = loss_spread(trainer, batch, draws=40)
    ratio = (variances["true"] / variances["false"]).item()
    print(f"variance of the DPO loss estimate, shared / independent masks: {ratio:.3f}")
    assert ratio < 0.25, variances


def test_bad_rows_are_named(workspace, tmp_path, caplog):
    rows = [{"prompt": "1+2=", "chosen": "<answer>3</answer>", "rejected": "<answer>4</answer>"}]
    for bad, message in [
        ({"prompt": "1+1=", "chosen": "<answer>2</answer>", "rejected": ""}, "row 1: the rejected response .* is empty"),
        ({"prompt": "1+1=", "chosen": "<answer>2</answer>", "rejected": "<answer>2</answer>"},
         "row 1: chosen and rejected are the same text"),
    ]:  # fmt: skip
        data = write_pairs(tmp_path / "bad.jsonl", rows + [bad])
        with pytest.raises(ValueError, match=message):
            build_trainer(config(workspace, tmp_path / "o", "--dataset_files", data))
    data = write_pairs(tmp_path / "cols.jsonl", [{"prompt": "1+1=", "good": "2", "rejected": "3"}])
    with pytest.raises(ValueError, match="chosen_column 'chosen' is not a column of the data"):
        build_trainer(config(workspace, tmp_path / "o", "--dataset_files", data))
    long = {"prompt": "1+1=", "chosen": "<answer>22222222</answer>", "rejected": "<answer>3</answer>"}
    data = write_pairs(tmp_path / "long.jsonl", rows * 3 + [long])
    with caplog.at_level(logging.WARNING, logger="align.dpo"):
        trainer = build_trainer(config(workspace, tmp_path / "o", "--dataset_files", data))
    assert len(trainer.train_dataset) == 3
    assert "1 of 4 pairs dropped" in caplog.text and "(rows 3)" in caplog.text


class StopAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        control.should_training_stop = True


def test_precomputed_reference_and_resume(workspace, tmp_path):
    """precompute_ref_log_probs: one estimate per row before training (first loss exactly log 2); a run
    stopped after step 2 and resumed matches the uninterrupted 4-step run."""
    common = (
        "--precompute_ref_log_probs",
        "true",
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    )
    whole = build_trainer(config(workspace, tmp_path / "whole", *common))
    assert len(whole._ref_cache) == 32
    whole.train()
    assert logs(whole, "loss")[0] == pytest.approx(math.log(2), abs=1e-6)
    first = build_trainer(config(workspace, tmp_path / "cut", *common))
    first.add_callback(StopAfterFirstSave())
    first.train()
    assert first.state.global_step == 2
    resumed = build_trainer(config(workspace, tmp_path / "cut", *common))
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    a, b = dict(whole.model.named_parameters()), dict(resumed.model.named_parameters())
    assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name,env", [("ddp", {"ACCELERATE_USE_CPU": "1"}), ("zero2", {"DS_ACCELERATOR": "cpu"}),
                                      ("zero3", {"DS_ACCELERATOR": "cpu"})])  # fmt: skip
def test_two_process_dpo(workspace, tmp_path, name, env):
    """Two processes train and log; under ZeRO-2 the reference is precomputed (each process estimates its
    shard, the tables are gathered, and the reshuffled later steps find every row)."""
    precompute = name == "zero2"
    steps = 10 if precompute else 2  # 32 pairs / (2 processes x 2) = 8 steps per epoch: 10 reach a reshuffle
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        os.path.join(REPO, "recipes", "accelerate", f"{name}.yaml"), "--num_processes", "2", "--mixed_precision", "no",
        "--main_process_port", free_port(), "-m", "align.dpo", "--model_name_or_path", str(workspace / "model"), "--dataset_files",
        str(workspace / "pairs.jsonl"), "--output_dir", str(tmp_path / "out"), "--use_chat_template", "false",
        "--max_prompt_length", "16", "--max_completion_length", "8", "--num_mc_samples", "2",
        "--per_device_train_batch_size", "2", "--max_steps", str(steps), "--logging_steps", "1", "--dtype", "float32",
        "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true", "--learning_rate", "1e-3",
        "--precompute_ref_log_probs", str(precompute).lower(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.load(open(tmp_path / "out" / "trainer_state.json"))
    logged = [h for h in state["log_history"] if "rewards/margins" in h]
    assert [h["step"] for h in logged] == list(range(1, steps + 1))
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    saved = LLaDAModelLM.from_pretrained(tmp_path / "out")
    initial = LLaDAModelLM.from_pretrained(workspace / "model")
    assert all(not torch.equal(p, initial.state_dict()[n]) for n, p in saved.state_dict().items())


def test_label_smoothing_with_a_loss_that_ignores_it_is_one_line(workspace, tmp_path):
    with pytest.raises(ValueError, match="label_smoothing 0.1 has no effect with loss_type 'sigmoid'.*cdpo"):
        config(workspace, tmp_path, "--loss_type", "sigmoid", "--label_smoothing", "0.1")
    assert (
        config(workspace, tmp_path, "--loss_type", "robust", "--label_smoothing", "0.1").loss_type == "robust"
    )

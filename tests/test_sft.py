"""Masked-diffusion SFT: batch layout, the LLaDA loss against a direct computation, and learning."""

import json

import pytest
import torch
import torch.nn.functional as F

from align.config import SFTConfig, load_config
from align.models import LLaDAModelLM
from align.sft import EPS, DiffusionSFTTrainer, build_trainer
from demos.tiny import VOCAB, build_tokenizer, tiny_config, write_task


def sft_config(tmp_path, *extra):
    write_task(str(tmp_path / "data"), num_train=256, num_test=4)
    build_tokenizer().save_pretrained(tmp_path / "tok")
    tiny_config(d_model=32, n_layers=2, mlp_hidden_size=64).to_json_file(tmp_path / "tok" / "config.json")
    argv = ["--model_name_or_path", str(tmp_path / "tok"), "--init_config", str(tmp_path / "tok" / "config.json"),
            "--dataset_files", str(tmp_path / "data" / "train.jsonl"), "--output_dir", str(tmp_path / "out"),
            "--use_chat_template", "false", "--max_prompt_length", "16", "--max_completion_length", "8",
            "--per_device_train_batch_size", "64", "--learning_rate", "3e-3", "--max_steps", "40", "--logging_steps",
            "10", "--dtype", "float32", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true"]  # fmt: skip
    return load_config(None, argv + list(extra), cls=SFTConfig)


def test_batch_layout_left_padded_prompt_then_eos_padded_response(tmp_path):
    trainer = build_trainer(sft_config(tmp_path))
    batch = trainer._collate([{"question": "1+2=", "completion": "<answer>3</answer>"},
                              {"question": "100+200=", "completion": "<answer>300</answer>"}])  # fmt: skip
    eos, bos = VOCAB.index("<|eos|>"), VOCAB.index("<|bos|>")
    tok = trainer.processing_class
    first = tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert (
        first
        == ["<|eos|>"] * 4
        + ["<|bos|>", "1", "+", "2", "="]
        + ["<answer>", "3", "</answer>"]
        + ["<|eos|>"] * 5
    )
    assert batch["attention_mask"][0].tolist() == [0] * 4 + [1] * 13
    assert batch["response_mask"][1].tolist() == [0] * 9 + [1] * 8
    assert batch["input_ids"][1, 0].item() == bos and batch["input_ids"][1, -1].item() == eos


def test_loss_matches_the_llada_sft_formula(tmp_path):
    trainer = build_trainer(sft_config(tmp_path))
    model = trainer.model.eval()
    batch = trainer._collate([{"question": "1+2=", "completion": "<answer>3</answer>"},
                              {"question": "100+200=", "completion": "<answer>300</answer>"}])  # fmt: skip
    torch.manual_seed(7)
    loss = trainer.compute_loss(model, batch)
    torch.manual_seed(7)  # the same draws, computed directly per row
    ids, resp = batch["input_ids"], batch["response_mask"].bool()
    t = torch.rand(2, 1)
    p = (1 - EPS) * t + EPS
    masked = resp & (torch.rand(ids.shape) < p)
    logits = model(
        torch.where(masked, trainer.spec.mask_token_id, ids), attention_mask=batch["attention_mask"]
    ).logits
    nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    expected = torch.stack([(nll[i][masked[i]] / p[i]).sum() / resp[i].sum() for i in range(2)]).mean()
    assert masked.any() and torch.allclose(loss, expected, atol=1e-5)


def test_short_sft_lowers_the_loss(tmp_path):
    trainer = build_trainer(sft_config(tmp_path))
    assert isinstance(trainer, DiffusionSFTTrainer) and isinstance(trainer.model, LLaDAModelLM)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and losses == sorted(losses, reverse=True) and losses[-1] < 0.85 * losses[0]


def test_max_time_s_stops_training_and_every_log_entry_carries_wall_s(tmp_path):
    from align.runner import train_and_save

    config = sft_config(tmp_path, "--max_steps", "100000", "--max_time_s", "2", "--logging_steps", "1")
    trainer = build_trainer(config)
    train_and_save(trainer, config)
    history = json.load(open(tmp_path / "out" / "trainer_state.json"))["log_history"]
    steps = [h["step"] for h in history if "loss" in h]
    walls = [h["wall_s"] for h in history]
    assert 2 <= len(steps) < 100000 and steps == list(range(1, len(steps) + 1))
    assert walls == sorted(walls) and walls[-1] >= 2.0
    # stopped at the first step that ended past the budget (the step in progress finishes, no later one runs)
    [stop] = [h for h in history if "max_time/elapsed_s" in h]
    assert (
        stop["step"] == steps[-1]
        and stop["max_time/previous_step_elapsed_s"] < 2.0 <= stop["max_time/elapsed_s"]
    )
    assert (tmp_path / "out" / "model.safetensors").exists()  # saved as at max_steps


def test_max_time_s_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_time_s must be a positive number of seconds"):
        sft_config(tmp_path, "--max_time_s", "0")


def test_a_dataset_smaller_than_one_dropped_batch_is_refused(tmp_path):
    config = sft_config(tmp_path, "--per_device_train_batch_size", "512", "--dataloader_drop_last", "true")
    with pytest.raises(ValueError, match="the dataset has 256 rows, fewer than one batch"):
        build_trainer(config)


def test_growing_rows_score_one_block_on_the_cut_canvas(tmp_path):
    """growing_fraction 1: every row masks inside one block at or before the block holding its first EOS, sees
    no key after that block, and its loss is -sum(log p on the mask) * nB * L_b / l / (tokens up to the EOS),
    recomputed here from the captured forward. Tokens after the EOS block then cannot move the loss; with
    LLaDA's objective (growing_fraction 0) they do."""
    trainer = build_trainer(sft_config(tmp_path, "--growing_fraction", "1", "--block_length", "2"))
    model = trainer.model.eval()
    rows = [{"question": "1+2=", "completion": "<answer>3</answer>"},
            {"question": "100+200=", "completion": "<answer>300</answer>"}]  # fmt: skip
    batch = trainer._collate(rows)
    start, eos = batch["input_ids"].shape[1] - 8, trainer.spec.eos_token_id
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append((a, kw)), with_kwargs=True)
    losses = []
    for draw in range(6):
        torch.manual_seed(draw)
        losses.append(trainer.compute_loss(model, batch))
    hook.remove()
    ids = batch["input_ids"]
    for loss, (args, kwargs) in zip(losses, seen, strict=True):
        noisy = kwargs.get("input_ids", args[0] if args else None)
        attn = kwargs["attention_mask"]
        masked = (noisy == trainer.spec.mask_token_id)[:, start:]
        expected = []
        for i in range(2):
            real = int((ids[i, start:] == eos).nonzero()[0]) + 1  # up to and including the first EOS
            blocks = masked[i].nonzero().flatten() // 2
            assert len(blocks) and (blocks == blocks[0]).all() and blocks[0] <= (real - 1) // 2
            b, nb = int(blocks[0]), (real - 1) // 2 + 1
            assert attn[i, start:].tolist() == [1] * (2 * b + 2) + [0] * (8 - 2 * b - 2)
            logp = model(noisy[i : i + 1], attention_mask=attn[i : i + 1]).logits[0, start:].log_softmax(-1)
            nll = -logp[masked[i]].gather(-1, ids[i, start:][masked[i]][:, None]).sum()
            expected.append(nll * nb * 2 / masked[i].sum() / real)
        assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][:, -2:] = VOCAB.index("7")  # the last block: after both rows' EOS block
    for fraction, moves in ((1.0, False), (0.0, True)):
        trainer.args.growing_fraction = fraction
        torch.manual_seed(3)
        before = trainer.compute_loss(model, batch)
        torch.manual_seed(3)
        assert bool(trainer.compute_loss(model, changed) != before) == moves


def test_growing_fraction_needs_a_block_length_dividing_the_canvas(tmp_path):
    with pytest.raises(
        ValueError, match="growing_fraction 0.5 needs block_length dividing max_completion_length"
    ):
        sft_config(tmp_path, "--growing_fraction", "0.5")
    with pytest.raises(ValueError, match=r"\(8\), got 3: set e.g. --block_length 8"):
        sft_config(tmp_path, "--growing_fraction", "0.5", "--block_length", "3")
    with pytest.raises(ValueError, match=r"growing_fraction must be in \[0, 1\], got 1.5"):
        sft_config(tmp_path, "--growing_fraction", "1.5", "--block_length", "2")

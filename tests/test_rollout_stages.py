"""Every rollout rule has one home (``align.rollout.stages``): the GRPO trainer's phase and verl's driver
(``align.verl._steps``), fed the same rows, the same decoded canvases and the same seed, build the same batch
(ids, attention, scored mask, advantages, wd1's group weights, mask_truncated_completions, the Monte Carlo
plan, the objective's divisor), and ``align eval`` decodes the text the trainer rewards."""

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from conftest import EOS_ID
from test_cli import save_tiny_checkpoint

from align.config import load_config
from align.data import load_rows
from align.models import family_spec, load_model, load_tokenizer
from align.objectives import get_objective
from align.rollout.engine import RolloutEngine
from align.rollout.phase import RolloutPhase
from align.rollout.rewards import RewardSet
from align.rollout.server import TokenOutput
from align.sampling import GenerationOutput

REWARDS = (
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tiny_rewards.py") + ":ones_fraction"
)
G, L = 4, 12
# where each of the 8 rollouts writes EOS (None: never; it is truncated)
STOPS = [3, None, 5, 0, None, 7, 2, None]


def _decoded():
    """The canvases [8, L] and the step each token was committed (a random order per row, as a sampler's)."""
    g = torch.Generator().manual_seed(4)
    canvas = torch.randint(2, 38, (len(STOPS), L), generator=g)
    for row, stop in enumerate(STOPS):
        if stop is not None:
            canvas[row, stop:] = EOS_ID
    commit = torch.stack([torch.randperm(L, generator=g) for _ in STOPS])
    return canvas, commit


class Scripted(RolloutEngine):
    name = "scripted"

    def generate(self, prompt_ids, attention_mask, settings, *, generator=None, on_block=None, **hooks):
        canvas, commit = _decoded()
        return GenerationOutput(sequences=torch.cat([prompt_ids, canvas], 1),
                                attention_mask=torch.cat([attention_mask, torch.ones_like(canvas)], 1),
                                commit_step=commit, nfe=1, prompt_length=prompt_ids.shape[1])  # fmt: skip


class ScriptedServer:
    """verl's rollout server as the driver calls it (``generate_batch.remote``, ``update_weights.remote``)."""

    def __init__(self):
        self.generate_batch = SimpleNamespace(remote=self._generate)
        self.update_weights = SimpleNamespace(remote=lambda state: 1)

    def _generate(self, requests, params):
        canvas, commit = _decoded()
        assert len(requests) == len(canvas)
        return [TokenOutput(token_ids=[], extra_fields={"canvas": c.tolist(), "commit_step": s.tolist()})
                for c, s in zip(canvas, commit, strict=True)]  # fmt: skip


class Workers:
    """verl's worker group as the driver calls it: keeps the batch it was sent."""

    def update_actor(self, data):
        self.data = data
        return SimpleNamespace(batch={"loss": torch.zeros(1)})

    def state_dict(self):
        return [{}]


CASES = {
    # wd1's group weights, the rows that never stopped dropped, prompt tokens masked too
    "wd1": ["--loss_type", "wd1", "--mask_truncated_completions", "true", "--estimator", "elbo",
            "--num_mc_samples", "2", "--p_mask_prompt", "0.3"],
    # an objective scoring the whole canvas (EOS padding included), with its own per-sample sums
    "bgpo": ["--loss_type", "bgpo", "--estimator", "coupled", "--num_mc_samples", "2", "--scale_rewards", "group"],
    # the trace replay of the sampler's order, a divisor counted in passes
    "tracerl": ["--loss_type", "tracerl", "--estimator", "trace", "--trace_merge", "3"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_trainers_phase_and_verls_driver_build_the_same_batch(tmp_path, monkeypatch, case):
    import ray

    from align.verl import _steps

    save_tiny_checkpoint(tmp_path / "m")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(f'{{"question": "w{3 + i} w{4 + i}", "answer": "w5"}}\n' for i in range(6)))
    args = load_config(None, [
        "--model_name_or_path", str(tmp_path / "m"), "--dataset_files", str(data), "--output_dir", str(tmp_path / "o"),
        "--use_chat_template", "false", "--max_completion_length", str(L), "--block_length", str(L),
        "--diffusion_steps", str(L), "--num_generations", str(G), "--per_device_train_batch_size", "8",
        "--max_steps", "1", "--dtype", "float32", "--reward_funcs", REWARDS,
        "--report_to", "none", "--use_cpu", "true", "--beta", "0", "--seed", "11", *CASES[case],
    ])  # fmt: skip
    tok = load_tokenizer(args.model_name_or_path)
    spec = family_spec(load_model(args.model_name_or_path, dtype="float32"), tok)
    rows = load_rows(args)

    # verl's driver, one step: it picks its rows with its own generator; the phase gets the same rows
    monkeypatch.setattr(ray, "get", lambda refs: refs)
    workers = Workers()
    _steps(args, workers, [ScriptedServer()], tok, spec, G, 8, 1, on_step=lambda entry, state: None)
    verl = workers.data
    first = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed))[:2].tolist()
    picked = [rows[i] for i in first]

    accelerator = SimpleNamespace(
        device=torch.device("cpu"), process_index=0, num_processes=1, gather=lambda t: t
    )
    rewards = RewardSet(args.reward_funcs, args.reward_weights, args.reward_timeout_s)
    phase = RolloutPhase(args, get_objective(args.loss_type), Scripted(), rewards, tok, spec, accelerator,
                         passes=None, policy=None, reference=None)  # fmt: skip
    batch = phase.run(picked, 0, {"global_step": 0}, defaultdict(list))
    order = torch.randperm(len(STOPS), generator=phase.seeded(0, -1))  # the phase's shuffle of the rows
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))

    assert torch.equal(batch.ids[back], verl.batch["input_ids"])
    assert torch.equal(batch.attn[back].long(), verl.batch["attention_mask"].long())
    assert torch.equal(batch.mask[back].long(), verl.batch["response_mask"].long())
    assert torch.equal(batch.advantages[back], verl.batch["advantages"])
    assert torch.equal(batch.masked[0][:, back].transpose(0, 1), verl.batch["mc_masked"])
    assert torch.equal(batch.weights[0][:, back].transpose(0, 1), verl.batch["mc_weights"])
    assert float(batch.normalizer) == verl.meta_info["count"]
    if case == "wd1":
        assert torch.equal(batch.group_weights[back], verl.batch["group_weights"])
        scored = verl.batch["response_mask"][:, -L:]
        assert [bool(r.any()) for r in scored] == [s is not None for s in STOPS]  # truncated rows dropped
        assert verl.batch["mc_masked"][..., :-L].any()  # prompt tokens masked (p_mask_prompt)
    if case == "bgpo":
        assert verl.batch["response_mask"][:, -L:].all()  # the whole canvas, EOS padding included
    if case == "tracerl":
        assert "group_weights" not in verl.batch.keys() and batch.group_weights is None


def test_eval_decodes_the_text_the_trainer_rewards(tmp_path):
    """``align eval``'s diffusion source cuts and decodes a batch as the trainer's stage does (first stop token,
    special tokens skipped)."""
    from align.eval.runner import DiffusionSource
    from align.rollout import stages

    save_tiny_checkpoint(tmp_path / "m")
    tok = load_tokenizer(str(tmp_path / "m"))
    model = load_model(str(tmp_path / "m"), dtype="float32")
    spec = family_spec(model, tok)
    canvas, commit = _decoded()

    class Decoded:
        def decode(self, model, ids, attn, settings, **_):
            return GenerationOutput(sequences=torch.cat([ids, canvas[: len(ids)]], 1), attention_mask=attn,
                                    commit_step=commit[: len(ids)], nfe=1, prompt_length=ids.shape[1])  # fmt: skip

    state = SimpleNamespace(is_main_process=True, device="cpu", num_processes=1)
    runner = DiffusionSource(model, tok, spec, state=state, batch_size=8)
    runner.engine = Decoded()
    protocol = SimpleNamespace(max_prompt_length=None, use_chat_template=False, encode_special_tokens=True,
                               sampler=lambda: None, stop_strings=(), gen_length=L, block_length=L, variable_length=False,
                               logits_eos_inf=False, confidence_eos_eot_inf=False, whole_canvas=False)  # fmt: skip
    runner.prompt = lambda message, protocol: message
    runner.logits_hook = lambda protocol: None
    runner.stop_rule = lambda protocol: {}
    texts = runner._decode(model, [f"w{3 + i}" for i in range(8)], protocol, 0, 0)
    assert texts == stages.cut(canvas, spec, tok).texts
    assert texts[3] == "" and len(texts[1].split()) == L  # EOS first: nothing; never stopped: every token

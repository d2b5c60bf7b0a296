"""Variable-length GRPO rollouts (iLLaDA's block-by-block growth until EOS) and their likelihood, estimator
``growing``: each block's ELBO on the canvas cut at that block's end, the earlier blocks clean."""

import itertools
import math

import pytest
import torch
from conftest import MASK_ID, tiny_model

from align.logprob import make_plan, pass_logprobs, sequence_logprob
from align.logprob.estimators import MaskPlan

P, L, BLOCK = 3, 5, 2  # blocks {P, P+1}, {P+2, P+3}, {P+4}


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=5)
    with torch.no_grad():
        model.model.transformer.ff_out.weight.mul_(0.25)
    ids = torch.randint(2, 38, (1, P + L), generator=torch.Generator().manual_seed(1))
    completion = torch.zeros(1, P + L, dtype=torch.bool)
    completion[:, P:] = True
    return model, ids, completion


def _blocks(upto=L):
    cols = list(range(P, P + upto))
    return [cols[i : i + BLOCK] for i in range(0, len(cols), BLOCK)]


@torch.no_grad()
def exact_growing(model, ids, scored_upto=L):
    """sum over the decoded blocks of each block's exact-count ELBO on the canvas *cut* at its end (the model
    is run on the sliced ids: nothing after the block exists), scored positions only."""
    scored = set(range(P, P + scored_upto))
    blocks = [b for b in _blocks() if any(i in scored for i in b)]
    total = 0.0
    for block in blocks:
        end = block[-1] + 1
        for k in range(1, len(block) + 1):
            values = []
            for subset in itertools.combinations(block, k):
                noisy = ids[:, :end].clone()
                noisy[0, list(subset)] = MASK_ID
                logp = model(noisy).logits[0].log_softmax(-1)
                values.append(sum(logp[i, ids[0, i]].item() for i in subset if i in scored))
            total += sum(values) / len(values) / k
    return total


@torch.no_grad()
def enumerated(model, ids, completion, scored_upto=L):
    """The growing plan's expectation over every (block, subset) draw, through pass_logprobs with ``visible``."""
    scored = torch.zeros_like(completion)
    scored[0, P : P + scored_upto] = True
    blocks = [b for b in _blocks() if any(i < P + scored_upto for i in b)]
    masks, weights, visible = [], [], []
    for block in blocks:
        for k in range(1, len(block) + 1):
            for subset in itertools.combinations(block, k):
                m = torch.zeros_like(completion)
                m[0, list(subset)] = True
                # P(block) P(l = k) P(S | k) x the plan's weight nB L_b / k
                p = (1 / len(blocks)) * (1 / len(block)) / math.comb(len(block), k)
                masks.append(m)
                weights.append((m & scored).double() * p * len(blocks) * len(block) / k)
                v = torch.ones_like(completion)
                v[0, block[-1] + 1 :] = False
                visible.append(v)
    plan = MaskPlan(torch.stack(masks), torch.stack(weights), 1, torch.stack(visible))
    values = pass_logprobs(model, ids, plan, mask_token_id=MASK_ID, chunk_size=4)
    return float((plan.weights * values.double()).sum())


# the whole canvas; an answer stopping inside block 2; a row cut at block 2's end without a stop token (a loop
# stopped early, a spent budget: GenerationOutput.decoded)
@pytest.mark.parametrize("scored_upto", [L, 3, 4])
def test_growing_is_exactly_the_cut_canvas_block_elbo(setup, scored_upto):
    model, ids, completion = setup
    exact = exact_growing(model, ids, scored_upto)
    assert abs(enumerated(model, ids, completion, scored_upto) - exact) < 1e-5


def test_growing_plan_draws_are_unbiased_and_cut_the_canvas(setup):
    model, ids, completion = setup
    exact = exact_growing(model, ids)
    n = 3000
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        est = sequence_logprob(model, ids.expand(n, -1), completion.expand(n, -1), estimator="growing",
                               num_samples=2, mask_token_id=MASK_ID, generator=g, chunk_size=2, block_length=BLOCK)  # fmt: skip
    se = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - exact) < 4 * se and se < 0.05 * abs(exact), (est.mean().item(), exact, se)
    plan = make_plan("growing", completion, num_samples=3, generator=g, block_length=BLOCK)
    blocks = _blocks()
    for j in range(3):  # one block's subset masked; nothing after it visible; everything before it clean
        scored = plan.weights[j, 0].nonzero().flatten().tolist()
        b = next(i for i, blk in enumerate(blocks) if scored[0] in blk)
        assert set(scored) <= set(blocks[b]) and plan.masked[j, 0].nonzero().flatten().tolist() == scored
        assert (
            plan.visible[j, 0, : blocks[b][-1] + 1].all()
            and not plan.visible[j, 0, blocks[b][-1] + 1 :].any()
        )


def test_blocks_after_the_stop_are_never_drawn(setup):
    """A row whose answer ends in block 1 (EOS at P + 2): its samples pick blocks 0 or 1, never block 2."""
    _, _, completion = setup
    score = torch.zeros_like(completion)
    score[0, P : P + 3] = True
    plan = make_plan("growing", completion.expand(64, -1), num_samples=4, block_length=BLOCK,
                     score_mask=score.expand(64, -1), generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not plan.masked[..., P + 4 :].any() and plan.masked[..., P : P + 4].any()
    assert not plan.weights[..., P + 3 :].any()


def test_a_fixed_canvas_estimator_with_variable_length_rollouts_is_one_line():
    from align.config import GRPOConfig, load_config

    base = ["--use_cpu", "true", "--max_completion_length", "32", "--diffusion_steps", "32"]
    with pytest.raises(ValueError, match="set estimator growing"):
        load_config("recipes/tiny/grpo.yaml", base + ["--variable_length", "true"], cls=GRPOConfig)
    with pytest.raises(ValueError, match="set variable_length true"):
        load_config("recipes/tiny/grpo.yaml", base + ["--estimator", "growing"], cls=GRPOConfig)
    with pytest.raises(ValueError, match="not a multiple of block_length"):
        load_config("recipes/tiny/grpo.yaml", ["--use_cpu", "true", "--max_completion_length", "30", "--diffusion_steps",
                                               "30", "--variable_length", "true", "--estimator", "growing"], cls=GRPOConfig)  # fmt: skip


def test_the_rollout_buffer_keeps_the_cut_canvas_across_a_mid_phase_checkpoint():
    """visible (and TraceRL's longest) survive the buffer file of a mid-phase checkpoint, and each micro-batch's
    plan carries its rows' cut canvas."""
    from align.rollout.batch import RolloutBatch

    completion = torch.zeros(4, P + L, dtype=torch.bool)
    completion[:, P:] = True
    plan = make_plan(
        "growing", completion, num_samples=2, block_length=BLOCK, generator=torch.Generator().manual_seed(3)
    )
    batch = RolloutBatch(ids=torch.zeros(4, P + L, dtype=torch.long), attn=torch.ones(4, P + L), mask=completion,
                         advantages=torch.zeros(4), masked=plan.masked[None], weights=plan.weights[None], num_samples=2,
                         old=None, ref=None, normalizer=torch.tensor(1.0), longest=torch.tensor(5.0),
                         visible=plan.visible[None])  # fmt: skip
    again = RolloutBatch.from_state(batch.state(), group_weighted=False)
    assert torch.equal(again.visible, batch.visible) and again.longest == 5.0
    micro = again.micro_batch(1, 0, 2)
    assert torch.equal(micro.plan.visible, plan.visible[:, 2:4]) and micro.longest == 5.0


def test_the_end_of_thinking_boost_reaches_the_rollouts(tmp_path):
    """boost_token / boost / boost_power: iLLaDA's boost in GRPO rollouts (here on </answer>, power 0: the full
    100 from the first position): each logged completion writes the boosted token first; a boost text the
    tokenizer cannot write is one line."""
    import json

    from align.cli import main as align

    out = tmp_path / "run"
    argv = ["train", "--config", "recipes/tiny/grpo.yaml", "--boost_token", "</answer>", "--boost", "100",
            "--boost_power", "0", "--max_steps", "1", "--logging_steps", "1", "--log_completions", "true",
            "--output_dir", str(out), "--report_to", "none"]  # fmt: skip
    assert align(argv) == 0
    rows = [json.loads(line) for line in open(out / "completions.jsonl")]
    assert rows and all(r["completion"].startswith("</answer>") for r in rows)
    assert align([*argv[:4], "</think>", *argv[5:], "--output_dir", str(tmp_path / "two")]) == 2


def test_the_committed_mixed_length_model_decodes_both_ways_and_variable_reads_less():
    """recipes/tiny-mixed/model (short and worked answers, SFT on whole and growing canvases): on 64 held-out
    questions both decodings answer >= 90 %, and variable-length decoding encodes under half the positions
    (rows x keys over the forward calls, counted at the model) of the fixed 48-token canvas."""
    import json

    from conftest import kw_generate as generate

    from align.models import family_spec, load_model, load_tokenizer

    path = "recipes/tiny-mixed/model"
    model, tok = load_model(path, dtype="float32").eval(), load_tokenizer(path)
    tok.padding_side = "left"
    rows = [json.loads(line) for line in open("recipes/tiny-mixed/data/test.jsonl")][:64]
    enc = tok([r["question"] for r in rows], return_tensors="pt", padding=True)
    cost, accuracy = {}, {}
    for variable in (False, True):
        positions = []
        hook = model.register_forward_pre_hook(
            lambda m, a, kw, seen=positions: seen.append(
                (kw["input_ids"] if "input_ids" in kw else a[0]).numel()
            ),
            with_kwargs=True,
        )
        out = generate(model, enc["input_ids"], enc["attention_mask"], gen_length=48, steps=48, block_length=8,
                       variable_length=variable, spec=family_spec(model, tok))  # fmt: skip
        hook.remove()
        texts = tok.batch_decode(out.completion_ids, skip_special_tokens=True)
        accuracy[variable] = (
            sum(f"<answer>{r['answer']}</answer>" in t for r, t in zip(rows, texts, strict=True)) / 64
        )
        cost[variable] = sum(positions)
    assert accuracy[False] >= 0.9 and accuracy[True] >= 0.9, accuracy
    assert cost[True] < 0.5 * cost[False], cost


def _forcing_hook(prompts, table):
    """A logits hook writing table[i, position] at every completion position of the row whose prompt is
    prompts[i] (the model's own logits lose; the sampler hands the hook its active rows only)."""

    def hook(logits, canvas, masked, completion_start, block_offset, **_):
        rows = [
            next(i for i, p in enumerate(prompts) if torch.equal(c[:completion_start], p)) for c in canvas
        ]
        forced = table[rows, block_offset : block_offset + logits.shape[1], None]
        logits.scatter_add_(-1, forced, torch.full_like(logits[..., :1], 1e4))

    return hook


@pytest.mark.parametrize("blocks", [1, 2])
def test_a_row_looping_for_k_blocks_leaves_the_batch_and_keeps_what_it_wrote(blocks):
    """loop_stop_blocks K: row 0 writes "5 6 7" over and over, row 1 a sequence that never repeats. Row 0 leaves
    after the first block at whose end its ids had ended in a loop for K blocks (rewards/loops.py: 16-token
    segments of period 3 are 18 tokens, 3 copies = 51 equal pairs, + (K - 1) blocks), its tokens up to there as
    the uncut run wrote them, EOS filler after, never committed; row 1 runs its whole budget. The completion mask
    ends where it stopped (no stop token: truncated) and the growing plan never draws a block after it."""
    from conftest import EOS_ID
    from conftest import kw_generate as generate

    from align.models import family_spec
    from align.rollout.loop_stop import LoopStop
    from align.sampling import truncate_at_stop

    model, gen, block = tiny_model(seed=5), 96, 8
    table = torch.stack(
        [torch.tensor([5, 6, 7] * (gen // 3)), torch.randperm(36)[torch.arange(gen) % 36] + 2]
    )
    table[1, 36:72] = table[1, 36:72].roll(5)  # no stretch of 36 repeats either
    ids = torch.randint(2, 38, (2, 3), generator=torch.Generator().manual_seed(1))
    settings = dict(gen_length=gen, steps=gen, block_length=block, variable_length=True,
                    logits_hook=_forcing_hook(ids, table), spec=family_spec(model))  # fmt: skip
    free = generate(model, ids, **settings)
    out = generate(model, ids, **settings, stop_check=LoopStop([EOS_ID], blocks, block))
    needed = 3 * 18 - 3 + (blocks - 1) * block  # equal pairs (token, token 3 later) the loop must hold
    expected = next(e for e in range(block, gen + 1, block) if e - 3 >= needed)
    assert out.decoded.tolist() == [expected, gen] and expected == (56 if blocks == 1 else 64)
    assert torch.equal(free.completion_ids[0, :expected], table[0, :expected])
    assert torch.equal(out.completion_ids[0, :expected], table[0, :expected])
    assert (out.completion_ids[0, expected:] == EOS_ID).all() and (out.commit_step[0, expected:] == -1).all()
    assert torch.equal(out.completion_ids[1], free.completion_ids[1]) and free.decoded.tolist() == [gen, gen]
    _, mask = truncate_at_stop(out.completion_ids, [EOS_ID], EOS_ID, out.decoded)
    assert mask[0].tolist() == [1] * expected + [0] * (gen - expected) and mask[1].all()
    plan = make_plan("growing", mask[:1].bool().expand(256, -1), num_samples=2, block_length=block,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not plan.masked[..., expected:].any() and plan.masked[..., expected - block : expected].any()


def test_loop_stop_settings_are_one_line():
    from align.config import GRPOConfig, load_config

    base = ["--use_cpu", "true", "--max_completion_length", "32", "--diffusion_steps", "32"]
    with pytest.raises(
        ValueError, match="set variable_length true and estimator growing, or loop_stop_blocks 0"
    ):
        load_config("recipes/tiny/grpo.yaml", base + ["--loop_stop_blocks", "2"], cls=GRPOConfig)
    grow = base + ["--variable_length", "true", "--estimator", "growing"]
    with pytest.raises(ValueError, match="loop_stop_blocks must be >= 0"):
        load_config("recipes/tiny/grpo.yaml", grow + ["--loop_stop_blocks", "-1"], cls=GRPOConfig)
    with pytest.raises(ValueError, match="loop_unit 'tokens' is not one of words, chars"):
        load_config("recipes/tiny/grpo.yaml", base + ["--loop_unit", "tokens"], cls=GRPOConfig)
    assert (
        load_config(
            "recipes/tiny/grpo.yaml", grow + ["--loop_stop_blocks", "2"], cls=GRPOConfig
        ).loop_stop_blocks
        == 2
    )


def test_the_trainer_stops_looping_rollouts_and_scores_what_they_wrote(tmp_path):
    """loop_stop_blocks 1 through the trainer's own rollout phase (the in-process engine, a logits hook forcing
    the tokens): the 4 rollouts of one prompt write "5 6 7" over and over and leave after 56 of 64 tokens, the
    4 of the other write 64 tokens that never repeat. One GRPO step logs completions/loop_stopped_ratio 0.5,
    the mean completion length (the scored mask) (4 x 56 + 4 x 64) / 8, every row truncated, and loop_penalty
    by name scores each looping row's text -1."""
    from test_cli import save_tiny_checkpoint

    from align.config import load_config
    from align.data import load_rows
    from align.models import family_spec, load_model, load_tokenizer
    from align.rollout.engine import InProcessEngine
    from align.trainer import DiffusionGRPOTrainer

    save_tiny_checkpoint(tmp_path / "m")
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "w3 w4", "answer": "w5"}\n{"question": "w6 w7", "answer": "w5"}\n' * 4)
    tok = load_tokenizer(str(tmp_path / "m"))
    looping_prompt = tok.convert_tokens_to_ids("w3")
    loop, plain = (
        torch.tensor([5, 6, 7] * 22),
        torch.randperm(36, generator=torch.Generator().manual_seed(0)) + 2,
    )

    def forcing(logits, canvas, masked, completion_start, block_offset, **_):
        for r in range(len(logits)):
            pattern = (
                loop if (canvas[r, :completion_start] == looping_prompt).any() else torch.cat([plain, plain])
            )
            forced = pattern[block_offset : block_offset + logits.shape[1]]
            logits[r, torch.arange(len(forced)), forced] += 1e4

    class Forced(InProcessEngine):
        def generate(self, *args, **hooks):
            return super().generate(*args, logits_hook=forcing, **hooks)

    args = load_config(None, [
        "--model_name_or_path", str(tmp_path / "m"), "--dataset_files", str(data), "--output_dir", str(tmp_path / "out"),
        "--use_chat_template", "false", "--max_completion_length", "64", "--block_length", "8", "--diffusion_steps", "64",
        "--variable_length", "true", "--estimator", "growing", "--loop_stop_blocks", "1", "--num_generations", "4",
        "--per_device_train_batch_size", "8", "--max_steps", "1", "--logging_steps", "1", "--dtype", "float32",
        "--reward_funcs", "loop_penalty", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true",
        "--log_completions", "true", "--num_completions_to_print", "8",
    ])  # fmt: skip
    model = load_model(args.model_name_or_path, dtype="float32")
    engine = Forced(family_spec(model, tok), model=model)
    trainer = DiffusionGRPOTrainer(
        model, args=args, train_dataset=load_rows(args), processing_class=tok, engine=engine
    )
    trainer.train()
    [logged] = [h for h in trainer.state.log_history if "completions/loop_stopped_ratio" in h]
    assert logged["completions/loop_stopped_ratio"] == 0.5 and logged["completions/loop_ratio"] == 0.5
    assert (
        logged["completions/mean_length"] == (4 * 56 + 4 * 64) / 8
        and logged["completions/clipped_ratio"] == 1.0
    )
    assert logged["rewards/loop_penalty/mean"] == -0.5
    assert logged["rollout/decoded_tokens"] == 4 * 56 + 4 * 64  # the rows cut early decoded less

"""align plan: parameter counts, phase memory against measured peaks on CPU, and the start-up refusal."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from align.cli import main
from align.models import LLaDAConfig, LLaDAModelLM
from align.plan import GIB, KNOWN_SHAPES, ModelShape, check_fits, make_plan, shape_of
from demos.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _count(config) -> int:
    from align.models.modeling_dream import DreamLM
    from align.models.modeling_sdar import SDARLM

    cls = {"Dream": DreamLM, "sdar": SDARLM}.get(config.model_type, LLaDAModelLM)
    with torch.device("meta"):
        return sum(p.numel() for p in cls(config).parameters())


@pytest.mark.parametrize(
    "overrides", [{}, {"n_kv_heads": 2, "weight_tying": True}, {"include_qkv_bias": True}]
)
def test_parameter_count_is_the_models(overrides):
    config = tiny_config(**overrides)
    assert ModelShape.from_config(config).params == _count(config)


@pytest.mark.parametrize("name", sorted(KNOWN_SHAPES))
def test_the_known_target_shapes_count_like_their_configs(name):
    from align.models import DreamConfig
    from align.plan import known_shape

    d, layers, heads, kv, h, v, tied, *family = KNOWN_SHAPES[name]
    if family and family[1] == "sdar":
        from align.models import SDARConfig

        config = SDARConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                            intermediate_size=h, vocab_size=v, tie_word_embeddings=tied, head_dim=family[2])  # fmt: skip
        assert known_shape(name).params == ModelShape.from_config(config).params == _count(config)
        assert 4.0e9 < _count(config) < 8.5e9
        return
    if family and family[1] == "dream":
        config = DreamConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=kv, intermediate_size=h, vocab_size=v, tie_word_embeddings=tied)  # fmt: skip
    else:
        config = LLaDAConfig(d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv, mlp_hidden_size=h,
                             vocab_size=v, weight_tying=tied, mask_token_id=5)  # fmt: skip
    shape = known_shape(name)
    assert shape.params == _count(config) and shape == ModelShape.from_config(config)
    assert 7.0e9 < _count(config) < 8.5e9


def _args(**overrides):
    base = dict(dtype="float32", use_peft=False, beta=0.0, max_prompt_length=16, max_completion_length=128,
                rollout_batch_size=8, generation_batch_size=8, block_length=32, cache=None, per_device_train_batch_size=8,
                mc_chunk_size=2, mc_backward="chunked", activation_checkpointing=False, num_mc_samples=2, estimator="elbo",
                diffusion_steps=8, trace_merge=1, gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
                lora_r=16, lora_target_modules=[])  # fmt: skip
    return SimpleNamespace(**{**base, **overrides})


SHAPES = {
    "small": {"d_model": 128, "n_heads": 4, "n_layers": 2, "mlp_hidden_size": 384, "vocab_size": 2048},
    "medium": {"d_model": 256, "n_heads": 4, "n_layers": 4, "mlp_hidden_size": 768, "vocab_size": 16384},
}


@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(SHAPES))
@pytest.mark.parametrize("phase", ["rollout", "estimate", "policy step"])
def test_phase_memory_is_within_25_percent_of_the_measured_peak(size, phase):
    """Each phase run alone in a fresh process (tests/plan_probe.py: random-init model, CPU float32, peak
    resident memory above the memory just before it) against the planner's transient bytes for it."""
    shape = SHAPES[size]
    probe = {**shape, "rows": 8, "prompt": 16, "completion": 128, "chunk": 2, "block": 32}
    # glibc reads MALLOC_MMAP_THRESHOLD_ at start-up only: a fixed threshold returns every freed tensor to the
    # kernel at once and stops the dynamic raise that let a phase reuse resident heap pages unseen (the
    # measured peak was bimodal, 13 or 21 MB for rollout-small); with it the figure repeats to the page
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "plan_probe.py"), phase.split()[0],
                          json.dumps(probe)], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["bytes"]
    config = LLaDAConfig(**shape, mask_token_id=shape["vocab_size"] - 1, max_sequence_length=144)
    predicted = make_plan(ModelShape.from_config(config), _args()).phases[phase]
    assert 0.75 < predicted / measured < 1.25, (predicted / 2**20, measured / 2**20)


def test_static_memory_follows_zero_stages_and_lora():
    shape = shape_of(*KNOWN_SHAPES["GSAI-ML/LLaDA-8B-Instruct"])
    ddp = make_plan(shape, _args(dtype="bfloat16"), processes=8, zero=0).static
    zero2 = make_plan(shape, _args(dtype="bfloat16"), processes=8, zero=2).static
    zero3 = make_plan(shape, _args(dtype="bfloat16"), processes=8, zero=3).static
    assert ddp["weights"] == zero2["weights"] == 8 * zero3["weights"] == 2 * shape.params
    assert ddp["optimizer"] == 8 * zero2["optimizer"] == 12 * shape.params  # fp32 master + Adam moments
    lora = make_plan(shape, _args(dtype="bfloat16", use_peft=True, lora_r=8, lora_target_modules=["q_proj"]),
                     processes=8, zero=2).static  # fmt: skip
    assert lora["optimizer"] == 12 * 32 * 8 * (4096 + 4096) / 8
    with_ref = make_plan(shape, _args(dtype="bfloat16", beta=0.04), processes=8, zero=3).static
    assert with_ref["reference"] == zero3["weights"]


def test_a_plan_that_cannot_fit_is_refused_with_the_setting_to_change(tmp_path, capsys):
    shape = shape_of(*KNOWN_SHAPES["GSAI-ML/iLLaDA-8B-Instruct"])
    plan = make_plan(shape, _args(dtype="bfloat16", mc_backward="joint", num_mc_samples=16, max_completion_length=2048,
                                  per_device_train_batch_size=4, rollout_batch_size=4), processes=8, zero=3)  # fmt: skip
    with pytest.raises(ValueError, match="policy step phase needs about .* set mc_backward: chunked"):
        check_fits(plan, 80)
    assert plan.peak("policy step") > 80 * GIB > plan.peak("rollout")
    # align plan prints the table and says what does not fit; align train refuses before loading weights
    assert main(["plan", os.path.join(REPO, "recipes", "tiny", "grpo.yaml"), "--gpus", "1", "--zero", "0",
                 "--gpu-memory", "0.01"]) == 1  # fmt: skip
    out = capsys.readouterr().out
    assert "| policy step |" in out and "does not fit: the rollout phase needs about" in out
    argv = ["train", "--config", os.path.join(REPO, "recipes", "tiny", "grpo.yaml"), "--max_gpu_memory_gb", "0.01",
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("align train: the rollout phase needs about") and "rollout_batch_size" in err
    assert not (tmp_path / "out").exists()


def test_variable_length_work_follows_the_expected_length():
    """Variable-length rollouts: FLOPs shrink with the mean completion length (blocks decoded on cut canvases,
    growing's passes on the average cut), memory and forward calls stay the budget's (upper bounds)."""
    shape = shape_of(*KNOWN_SHAPES["GSAI-ML/iLLaDA-8B-Instruct"])
    base = dict(variable_length=True, estimator="growing", max_completion_length=2048, max_prompt_length=512,
                block_length=32, diffusion_steps=1024, generation_batch_size=64, rollout_batch_size=16,
                per_device_train_batch_size=4, gradient_accumulation_steps=4, steps_per_generation=4,
                num_iterations=2, num_mc_samples=2, mc_chunk_size=1, cache="dual", dtype="bfloat16",
                activation_checkpointing=True, beta=0.005)  # fmt: skip
    full = make_plan(shape, _args(**base), processes=8, zero=3)
    at_budget = make_plan(shape, _args(**base), processes=8, zero=3, expected_length=2048)
    half = make_plan(shape, _args(**base), processes=8, zero=3, expected_length=1024)
    short = make_plan(shape, _args(**base), processes=8, zero=3, expected_length=100)
    assert full.flops == at_budget.flops > half.flops > short.flops
    assert full.phases == half.phases == short.phases and full.forward_passes == short.forward_passes
    fixed = make_plan(shape, _args(**{**base, "variable_length": False, "estimator": "coupled", "num_mc_samples": 1}),
                      processes=8, zero=3)  # fmt: skip
    assert fixed.flops > full.flops  # the fixed canvas encodes the whole budget at every block


def test_expected_length_needs_a_variable_length_recipe(capsys):
    from align.cli import main

    assert main(["plan", os.path.join(REPO, "recipes", "tiny", "grpo.yaml"), "--expected-length", "5"]) == 2
    assert "--expected-length plans variable-length rollouts" in capsys.readouterr().err


def test_a_recipe_is_planned_under_the_zero_stage_of_its_own_launch_command(tmp_path, capsys, monkeypatch):
    """`*_zero2.yaml` full fine-tuning recipes launch with zero2.yaml: align plan shards them as ZeRO-2 (the LoRA
    rule alone would say ZeRO-3); --zero still wins; a recipe with no launch line keeps the LoRA rule."""
    from align.plan import launch_zero

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dream = os.path.join(REPO, "recipes", "dream-7b-instruct", "grpo", "math_coupled_zero2.yaml")
    assert launch_zero(dream) == 2
    assert (
        launch_zero(os.path.join(REPO, "recipes", "illada-8b-instruct", "grpo", "math_full_zero3.yaml")) == 3
    )
    assert main(["plan", dream]) == 0
    assert f"{dream}: 7.62B parameters, 1 x 8 GPUs of 80 GiB, ZeRO-2\n" in capsys.readouterr().out
    assert main(["plan", dream, "--zero", "3"]) == 0
    assert ", ZeRO-3\n" in capsys.readouterr().out
    bare = tmp_path / "bare.yaml"
    bare.write_text("\n".join(line for line in open(dream) if not line.startswith("#")))
    assert launch_zero(str(bare)) is None
    ddp = tmp_path / "ddp.yaml"
    ddp.write_text(
        "# accelerate launch --config_file recipes/accelerate/ddp.yaml -m align.train\nbeta: 0.0\n"
    )
    monkeypatch.chdir(REPO)
    assert launch_zero(str(ddp)) == 0  # found from the working directory (the repository root here)


def test_the_readme_plan_table_is_the_one_the_script_prints(monkeypatch):
    """README's table of every committed GRPO recipe equals `benchmarks/plan_table.py`'s output (regenerate it
    with --write after a planner or recipe change)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import plan_table
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    printed = plan_table.table()
    assert len(printed) == 2 + len(plan_table.recipes()) >= 2 + 14
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        assert plan_table.readme_table(f.read()) == printed

"""Every recipe YAML parses into its config, and says how to launch itself."""

import glob
import os

import pytest
from accelerate.commands.config.config_args import ClusterConfig

from align.config import DPOConfig, GRPOConfig, SFTConfig, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = sorted(glob.glob(os.path.join(REPO, "recipes", "**", "*.yaml"), recursive=True))
ACCELERATE = [p for p in ALL if os.sep + "accelerate" + os.sep in p]
BENCH = [p for p in ALL if os.sep + "bench" + os.sep in p]
TRAINING = [p for p in ALL if p not in ACCELERATE + BENCH and os.sep + "model" + os.sep not in p]


def test_recipes_exist():
    names = {os.path.relpath(p, REPO) for p in ALL}
    assert {"recipes/accelerate/ddp.yaml", "recipes/accelerate/zero2.yaml", "recipes/accelerate/zero3.yaml",
            "recipes/tiny/grpo.yaml", "recipes/llada-8b-instruct/grpo/gsm8k_d1.yaml"} <= names  # fmt: skip
    assert len([n for n in names if n.startswith("recipes/illada-8b-instruct/grpo/")]) >= 3


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: os.path.relpath(p, REPO))
def test_training_recipe_parses_and_names_its_launch_command(path):
    sft = os.path.basename(path).startswith("sft")
    dpo = os.sep + "dpo" + os.sep in path or os.path.basename(path) == "dpo.yaml"
    # bf16 recipes are checked here without a GPU, hence --use_cpu
    config = load_config(
        path, ["--use_cpu", "true"], cls=SFTConfig if sft else DPOConfig if dpo else GRPOConfig
    )
    if not (sft or dpo):
        assert config.generation_batch_size % config.num_generations == 0
    head = open(path).read().split("\n", 3)[:3]
    assert head[0].startswith("# ") and any(os.path.relpath(path, REPO) in line for line in head)
    assert not config.model_name_or_path.startswith("/")


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: os.path.relpath(p, REPO))
def test_accelerate_config_parses(path):
    cfg = ClusterConfig.from_yaml_file(path)
    name = os.path.basename(path).removeprefix("multinode_")
    assert cfg.num_processes == 8 * cfg.num_machines and cfg.mixed_precision == "bf16"  # 8 GPUs per machine
    assert cfg.num_machines == (2 if name != os.path.basename(path) else 1)
    if "zero" in name:
        assert cfg.deepspeed_config["zero_stage"] == int(name[4])
    if "zero3" in name:  # else a full fine-tune ends with shards only, no model align eval can read
        assert cfg.deepspeed_config.get("zero3_save_16bit_model") is True


@pytest.mark.parametrize("path", BENCH, ids=lambda p: os.path.relpath(p, REPO))
def test_bench_spec_cells_parse_into_grpo_configs(path, monkeypatch):
    from align.bench import cell_command, load_spec

    monkeypatch.chdir(REPO)
    spec = load_spec(path)
    head = open(path).read().split("\n", 3)[:3]
    assert head[0].startswith("# ") and any(os.path.relpath(path, REPO) in line for line in head)
    for task in spec["tasks"]:
        for method in spec["methods"]:
            argv = cell_command(spec, task, method, 0, "runs/x")[len(spec["launch"]) :]
            assert argv[0] == "--config"
            config = load_config(argv[1], argv[2:] + ["--use_cpu", "true"], cls=GRPOConfig)
            assert (
                config.eval_tasks == [spec["tasks"][task]["eval"]]
                and config.max_steps == spec["budget"]["max_steps"]
            )

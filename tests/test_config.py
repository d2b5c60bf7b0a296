import pytest
import torch

from align.config import GRPOConfig, load_config

BASE = ["--output_dir", "out", "--dataset_files", "train.jsonl", "--report_to", "none"]


def test_yaml_then_command_line_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "output_dir: runs/x\ndataset_files: [a.jsonl]\nnum_generations: 4\nper_device_train_batch_size: 8\n"
        "reward_funcs: [math_accuracy, reasoning_answer_format]\nreward_weights: [2.0, 0.5]\nbeta: 0.04\n"
        "report_to: none\n"
    )
    config = load_config(str(recipe), ["--beta", "0.01", "--estimator", "coupled"])
    assert isinstance(config, GRPOConfig)
    assert config.num_generations == 4 and config.beta == 0.01 and config.estimator == "coupled"
    assert config.reward_funcs == ["math_accuracy", "reasoning_answer_format"] and config.reward_weights == [
        2.0,
        0.5,
    ]
    assert config.generation_batch_size == 8 and config.steps_per_generation == 1


@pytest.mark.parametrize("extra,message", [
    (["--num_generations", "3", "--per_device_train_batch_size", "8"], "generation_batch_size 8 .* not divisible by num_generations 3"),
    (["--max_completion_length", "250"], "max_completion_length 250 is not a multiple of block_length 32"),
    (["--diffusion_steps", "100"], "diffusion_steps 100 is not divisible by the number of blocks 8"),
    (["--estimator", "exact"], "estimator 'exact' is not one of"),
    (["--reward_weights", "1.0", "2.0"], "reward_weights has 2 values but reward_funcs has 1"),
    (["--loss_type", "ppo"], "loss_type 'ppo'"),
    (["--cache_refresh", "4"], "cache_refresh 4 needs cache: prefix or dual"),
    (["--loss_type", "spg", "--estimator", "spg", "--beta", "0.04"], "loss_type spg has no KL term; set beta 0"),
    (["--loss_type", "spg", "--estimator", "blockwise"], "loss_type spg is its authors' released algorithm on SPG's bounds: it needs SPG's masks \\(estimator spg\\), not 'blockwise'"),
    (["--loss_type", "spg", "--estimator", "spg", "--spg_beta", "0"], "spg_beta must be > 0"),
    (["--loss_type", "stabledrl", "--estimator", "coupled"], "loss_type stabledrl is its authors' released algorithm on SPG's bounds"),
    (["--loss_type", "spg", "--estimator", "spg", "--num_mc_samples", "9"], "estimator spg draws one block per Monte Carlo sample: num_mc_samples 9 > 8 blocks"),
    (["--loss_type", "tracerl", "--estimator", "elbo"], "loss_type tracerl is its authors' loss over replayed rollouts: it needs estimator trace"),
    (["--loss_type", "tracerl", "--estimator", "trace", "--beta", "0.04"], "loss_type tracerl has no reference-model KL .* tracerl_beta"),
    (["--loss_type", "justgrpo", "--estimator", "trace"], "loss_type justgrpo scores the exact left-to-right order: it needs block_length 1"),
    (["--loss_type", "wd1", "--beta", "0.04"], "loss_type wd1 has no KL term"),
    (["--loss_type", "wd1", "--scale_rewards", "group"], "^loss_type wd1 runs with scale_rewards none, as its authors' code does; the recipe sets scale_rewards 'group': remove it or set none.$"),
    (["--loss_type", "espo", "--estimator", "coupled"], "loss_type espo and estimator espo go together"),
    (["--estimator", "espo"], "loss_type espo and estimator espo go together"),
    (["--advantage_baseline", "loo"], "advantage_baseline 'loo' is not one of"),
])  # fmt: skip
def test_cross_field_errors_state_the_arithmetic(extra, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, BASE + extra)


def test_each_estimators_declaration_is_what_its_plan_does():
    """align.logprob.kinds: the declared passes of one estimate equal the passes the registered plan draws; the
    declared canvas, replay and attention are what the checks refuse (one line each)."""
    import types

    from align.errors import UsageError
    from align.logprob import make_plan
    from align.logprob.kinds import DPO_ESTIMATORS, KINDS
    from align.models.family import FamilySpec
    from align.sampling.family_checks import check_family_settings

    c = types.SimpleNamespace(num_mc_samples=2, diffusion_steps=8, trace_merge=2, max_completion_length=8,
                              block_length=4)  # fmt: skip
    completion = torch.zeros(2, 11, dtype=torch.bool)
    completion[:, 3:] = True
    commit = torch.full((2, 11), -1)
    commit[:, 3:] = torch.tensor(
        [[0, 1, 2, 3, 4, 5, 6, 7], [3, 2, 1, 0, 7, 6, 5, 4]]
    )  # a step group per block too
    for name, kind in KINDS.items():
        plan = make_plan(name, completion, num_samples=2, generator=torch.Generator().manual_seed(0), commit_step=commit,
                         num_steps=c.diffusion_steps, merge=c.trace_merge, block_length=c.block_length)  # fmt: skip
        assert plan.masked.shape[0] == kind.passes(c), name
        assert (plan.visible is not None) == (kind.canvas == "growing"), name
    assert set(DPO_ESTIMATORS) == {"blockwise", "coupled", "elbo", "one_step"}
    llada, sdar = (
        FamilySpec(model_type="llada", mask_token_id=5),
        FamilySpec(model_type="sdar", mask_token_id=5),
    )
    for name, kind in KINDS.items():
        for spec, refused in ((llada, kind.attention == "block"), (sdar, kind.attention == "full")):
            if refused:
                with pytest.raises(UsageError, match=f"estimator {name} "):
                    check_family_settings(spec, estimator=name)
            else:
                check_family_settings(spec, estimator=name)


def test_a_released_methods_fixed_fields_are_its_defaults():
    """wd1's code softmaxes raw (mean-centred) advantages: under loss_type wd1 an unset scale_rewards is none;
    every other loss keeps TRL's group default; an explicit value the method allows stands."""
    assert load_config(None, BASE + ["--loss_type", "wd1"]).scale_rewards == "none"
    assert load_config(None, BASE + ["--loss_type", "wd1", "--scale_rewards", "none"]).scale_rewards == "none"
    assert (
        load_config(None, BASE + ["--loss_type", "wd1_mean"]).scale_rewards == "group"
    )  # our variant: TRL's
    assert load_config(None, BASE).scale_rewards == "group"
    assert load_config(None, BASE + ["--scale_rewards", "batch"]).scale_rewards == "batch"
    spg = load_config(None, BASE + ["--loss_type", "spg", "--estimator", "spg", "--beta", "0"])
    espo = load_config(None, BASE + ["--loss_type", "espo", "--estimator", "espo"])
    assert (spg.scale_rewards, spg.advantage_baseline) == ("none", "group_mean")  # SPG: the group mean only
    assert (espo.scale_rewards, espo.advantage_baseline) == ("none", "leave_one_out")  # as coupled-GRPO's
    stabledrl = load_config(None, BASE + ["--loss_type", "stabledrl", "--estimator", "spg", "--beta", "0"])
    assert stabledrl.scale_rewards == "none"  # networks/llada_svpo.py l. 917-919: rewards - group mean
    replay = ["--loss_type", "tracerl", "--estimator", "trace", "--beta", "0"]
    assert load_config(None, BASE + replay).scale_rewards == "group"  # rl_reward.py's group z-score
    with pytest.raises(ValueError, match="^loss_type tracerl runs with scale_rewards group, as its"):
        load_config(None, BASE + replay + ["--scale_rewards", "none"])
    left_to_right = ["--loss_type", "justgrpo", "--estimator", "trace", "--block_length", "1"]
    with pytest.raises(ValueError, match="^loss_type justgrpo runs with scale_rewards group, as its"):
        load_config(None, BASE + left_to_right + ["--scale_rewards", "batch"])
    with pytest.raises(
        ValueError, match="^loss_type espo runs with advantage_baseline leave_one_out, as its"
    ):
        load_config(
            None, BASE + ["--loss_type", "espo", "--estimator", "espo", "--advantage_baseline", "group_mean"]
        )


def test_malformed_and_unknown_yaml_fields(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("num_generation: 8\n")
    with pytest.raises(
        ValueError, match=r"unknown config field 'num_generation'; did you mean num_generations or"
    ):
        load_config(str(typo))
    with pytest.raises(ValueError, match="No training data"):
        load_config(None, ["--output_dir", "out", "--report_to", "none"])


def test_the_light_vocabularies_match_the_registries():
    """align.fields keeps torch-free copies of the estimator, protocol and loss names for the one-line checks."""
    from align.eval.tasks import PROTOCOLS
    from align.fields import ESTIMATOR_NAMES, LOSS_TYPES, PROTOCOL_NAMES
    from align.logprob import ESTIMATORS
    from align.losses import RATIO_LOSS_TYPES, bgpo_loss, policy_loss, spg_loss

    assert ESTIMATOR_NAMES == tuple(sorted(ESTIMATORS))
    assert PROTOCOL_NAMES == tuple(sorted(PROTOCOLS))
    logps, mask = torch.zeros(4, 3), torch.ones(4, 3)
    assert set(LOSS_TYPES) == {*RATIO_LOSS_TYPES, "spg", "bgpo", "stabledrl", "espo", "justgrpo", "tracerl"}
    for loss_type in RATIO_LOSS_TYPES:
        policy_loss(logps, None, None, torch.ones(4), mask, loss_type=loss_type, num_generations=2,
                    max_completion_length=3)  # fmt: skip
    spg_loss(logps[None], mask[None].bool(), torch.ones(4), mask)
    bgpo_loss(logps, None, torch.ones(4), mask.sum(-1), canvas_length=3)


def test_a_parsed_config_does_not_change_how_later_commands_convert_values():
    """transformers rewrites inherited Field.type in place ("float | None" -> float) when it parses a config;
    the light command-line path reads the annotations as written, so a second command in one process (the
    demos chain sft and train) still converts --max_time_s to a number."""
    import dataclasses

    from align.config import SFTConfig, load_config
    from align.fields import GRPOFields
    from align.recipe import our_fields, recipe_values

    load_config(
        None,
        ["--output_dir", "/tmp/unused", "--dataset_files", "x.jsonl", "--max_time_s", "3"],
        cls=SFTConfig,
    )
    assert [f.type for f in dataclasses.fields(GRPOFields) if f.name == "max_time_s"] == [float]  # rewritten
    assert our_fields(GRPOFields)["max_time_s"].annotation == "float | None"
    values = recipe_values(GRPOFields, None, ["--max_time_s", "5", "--mask_token_id", "3"], "align train")
    assert values["max_time_s"] == 5.0 and values["mask_token_id"] == 3


def test_one_step_samples_that_repeat_one_pass_are_named(caplog):
    """one_step without prompt masking draws the same mask for every Monte Carlo sample: a warning names the
    waste; with p_mask_prompt (d1's 0.15) the samples differ and nothing is said."""
    import logging

    from align.logprob import make_plan
    from align.trainer import warn_repeated_passes

    canvas = torch.tensor([[0, 0, 1, 1, 1]])
    prompt = torch.tensor([[1, 1, 0, 0, 0]])
    same = make_plan("one_step", canvas, num_samples=3, prompt_mask=prompt, p_mask_prompt=0.0,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert all(torch.equal(same.masked[0], m) for m in same.masked)  # the waste the warning names
    with caplog.at_level(logging.WARNING, logger="align.trainer"):
        assert warn_repeated_passes(load_config(None, BASE + ["--estimator", "one_step", "--num_mc_samples", "3",
                                                              "--p_mask_prompt", "0"]))  # fmt: skip
    assert "the 3 passes are identical: 3x the estimate's compute for the same gradient" in caplog.text
    assert not warn_repeated_passes(load_config(None, BASE + ["--estimator", "one_step", "--num_mc_samples", "3",
                                                              "--p_mask_prompt", "0.15"]))  # fmt: skip
    assert not warn_repeated_passes(load_config(None, BASE + ["--estimator", "one_step"]))

"""``align bench``: a matrix of cells under one budget, resumable, with a failing cell recorded."""

import json
import os

import pytest
import yaml

from align.bench import cell_command, load_spec
from align.cli import main as align

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_spec(tmp_path, methods, **extra):
    spec = {"seeds": [0], "eval_steps": 2, "eval_limit": 24,
            "budget": {"max_steps": 2, "per_device_train_batch_size": 16, "num_generations": 4, "logging_steps": 1},
            "tasks": {"addition": {"recipe": os.path.join(REPO, "recipes/tiny/grpo.yaml"),
                                   "eval": "tiny=" + os.path.join(REPO, "recipes/tiny/data/test.jsonl")}},
            "methods": methods, **extra}  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_every_cell_gets_the_same_budget_and_evaluation(tmp_path):
    spec = load_spec(write_spec(tmp_path, {"d1": {"estimator": "one_step"}, "elbo": {"estimator": "elbo"}}))
    a = cell_command(spec, "addition", "d1", 0, "out/a")
    b = cell_command(spec, "addition", "elbo", 0, "out/b")
    shared = [x for x in a if x not in ("one_step", "out/a")]
    assert shared == [x for x in b if x not in ("elbo", "out/b")]
    assert "--eval_on_start" in a and a[a.index("--max_steps") + 1] == "2"


def test_bad_specs_are_refused_with_what_to_fix(tmp_path):
    path = write_spec(tmp_path, {"d1": {}}, steps=3)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['steps'\]"):
        load_spec(path)
    path = write_spec(tmp_path, {})
    with pytest.raises(ValueError, match="'methods' must map names to settings"):
        load_spec(path)
    for bad in (50, 0, "half"):
        with pytest.raises(ValueError, match=r"target_accuracy is a held-out accuracy in \(0, 1\]"):
            load_spec(write_spec(tmp_path, {"d1": {}}, target_accuracy=bad))
    with pytest.raises(ValueError, match="processes .* must be an integer >= 1, got 0"):
        load_spec(write_spec(tmp_path, {"d1": {}}, processes=0))


def fake_cell(folder, accuracies, per_device=64, accumulation=1, iterations=1):
    """A finished cell: held-out accuracies every 10 steps (3 training seconds a step) and saved arguments."""
    from types import SimpleNamespace

    import torch

    folder.mkdir(parents=True)
    history = [
        {"eval_tiny/accuracy": a, "step": 10 * i, "wall_s": 30.0 * i} for i, a in enumerate(accuracies)
    ]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    args = SimpleNamespace(per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
                           num_iterations=iterations)  # fmt: skip
    torch.save(args, folder / "training_args.bin")
    return str(folder)


def test_the_efficiency_columns_count_rollouts_and_seconds_to_the_target(tmp_path):
    from align.bench import cell_result, curves, table

    fast = cell_result(fake_cell(tmp_path / "a", [0.36, 0.49, 0.51, 0.48]), "tiny", target=0.5)
    assert fast["reached"] == {"step": 20, "rollouts": 1280, "wall_s": 60.0} and fast["final"] == 0.48
    # 2 processes x 16 rows x 4 accumulation steps, each rollout used twice: 64 generated per step
    slow = cell_result(fake_cell(tmp_path / "b", [0.36, 0.4, 0.45, 0.5], 16, 4, 2), "tiny", 0.5, processes=2)
    assert slow["rollouts_per_step"] == 64 and slow["reached"] == {
        "step": 30,
        "rollouts": 1920,
        "wall_s": 90.0,
    }
    never = cell_result(fake_cell(tmp_path / "c", [0.36, 0.4]), "tiny", target=0.5)
    assert never["reached"] is None
    assert "reached" not in cell_result(str(tmp_path / "a"), "tiny")  # no target: no efficiency
    cells = {"a": fast, "b": slow, "c": never}
    for key, method in (("a", "x"), ("b", "x"), ("c", "y")):
        cells[key].update(task="addition", method=method)
    header, _, x, y = table({"target_accuracy": 0.5}, cells, ["addition"], ["x", "y"], {"addition": 100})
    assert header.endswith("| seeds reaching 50% | rollouts to reach it | training s to reach it |")
    assert x.endswith("| 2/2 | 1,600 [1,280-1,920] | 75 [60-90] |")
    assert y.endswith("| 0/1 | - | - |")
    import matplotlib.figure

    drawn = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):  # what each panel plots, before the file is written
        drawn.extend(
            [
                [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines]
                for ax in fig.axes
            ]
        )
        return save(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = record
    try:
        assert curves(str(tmp_path), "addition", ["x", "y"], cells, 0.5) == str(
            tmp_path / "curves-addition.png"
        )
    finally:
        matplotlib.figure.Figure.savefig = save
    assert (tmp_path / "curves-addition.png").stat().st_size > 0
    by_rollouts, by_seconds = ({label: (xs, ys) for label, xs, ys in panel} for panel in drawn)
    # method x: seeds a and b (64 rollouts per step each) averaged at steps 0-30; y: seed c alone
    assert by_rollouts["x"][0] == [0, 640, 1280, 1920]
    assert by_rollouts["x"][1] == pytest.approx([36.0, 44.5, 48.0, 49.0])
    assert by_rollouts["y"] == ([0, 640], pytest.approx([36.0, 40.0]))
    assert by_seconds["x"] == (
        pytest.approx([0.0, 30.0, 60.0, 90.0]),
        pytest.approx([36.0, 44.5, 48.0, 49.0]),
    )
    assert [ys for _, ys in by_rollouts.values()].count([50, 50]) == 1  # the target, dotted
    assert curves(str(tmp_path), "sudoku", ["x", "y"], cells, 0.5) is None  # no cell of that task


@pytest.mark.slow
def test_a_small_matrix_runs_records_a_failing_cell_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    methods = {"d1": {"estimator": "one_step", "p_mask_prompt": 0.15}, "coupled": {"estimator": "coupled"},
               "broken": {"estimator": "no_such_estimator"}}  # fmt: skip
    spec, out = write_spec(tmp_path, methods, target_accuracy=0.99), tmp_path / "bench"
    assert (
        align(["bench", "--config", spec, "--output", str(out), "--jobs", "2"]) == 1
    )  # one failed, the rest ran
    results = json.load(open(out / "results.json"))["cells"]
    assert list(results) == [f"addition/{m}/0" for m in load_spec(spec)["methods"]]  # the matrix's order
    assert "estimator 'no_such_estimator' is not one of" in results["addition/broken/0"]["error"]
    for method in ("d1", "coupled"):
        cell = results[f"addition/{method}/0"]
        assert cell["steps"] == 2 and 0.0 <= cell["start"] <= 1.0 and 0.0 <= cell["final"] <= 1.0
        assert cell["rollouts_per_step"] == 16 and cell["reached"] is None  # the cell's own arguments
    table = (out / "table.md").read_text()
    assert "| addition | d1 |" in table and "| addition | broken | failed: exit 2" in table
    assert "| 0/1 | - | - |" in table
    assert (out / "report-addition" / "report.md").exists() and (
        out / "report-addition" / "training.png"
    ).exists()
    # a second run keeps the finished cells (their logs are untouched) and retries only the failed one
    stamp = os.path.getmtime(out / "addition" / "d1" / "seed-0" / "log.txt")
    assert align(["bench", "--config", spec, "--output", str(out), "--methods", "d1,coupled"]) == 0
    assert os.path.getmtime(out / "addition" / "d1" / "seed-0" / "log.txt") == stamp

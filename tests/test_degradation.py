"""The degradation experiment, reduced to run in CI: 8-layer plain and residual nets, one short
epoch on 64 digits. It must train through ``npresnet.training``, write its figures and metrics, keep
its numbers consistent, reuse finished networks, and reject bad depths clearly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from npresnet.experiments import degradation as D

pytestmark = pytest.mark.slow  # trains plain and residual nets through the train command

TINY = dict(epochs=1, batch_size=32, eval_batch_size=64, train_limit=64, test_limit=64, warmup_steps=0, milestones=[])


def test_reduced_run_writes_figures_and_consistent_metrics(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    lines = []
    results = D.run(depths=(8,), out_dir=str(out), work_dir=str(work), recipe=TINY, flow_batch=16, log=lines.append)
    assert set(results["networks"]) == {"plain8", "resnet8"}
    for name in ("training_error.png", "gradient_flow_init.png", "gradient_flow_trained.png"):
        data = (out / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 5000, name
    assert (out / "summary.md").read_text().count("| plain8 |") == 1

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["network"] for r in rows] == ["plain8", "resnet8"]  # one row per network and epoch
    saved = json.loads((out / "results.json").read_text())
    assert saved["recipe"]["lr"] == D.RECIPE["lr"] and saved["recipe"]["epochs"] == 1
    for row in rows:
        net = saved["networks"][row["network"]]
        last = net["history"][-1]
        assert float(row["train_error"]) == pytest.approx(1 - last["train_acc"])
        assert net["final_test_error"] == pytest.approx(1 - last["test_acc"])
        assert 0.0 <= net["final_train_error_eval"] <= 1.0
        assert last["step"] == 2  # 64 images / batch 32
        assert net["parameters"] == 75290  # plain and residual: the same layers
        blocks = net["flow_init"]["blocks"]
        assert [b["depth"] for b in blocks] == [1, 2, 3]
        assert all(b["input"] > 0 and np.isfinite(b["input"]) for b in blocks)
        if net["residual"]:
            assert all(b["shortcut"] > 0 for b in blocks)
        else:
            assert all(b["shortcut"] == 0 and b["main"] == b["input"] for b in blocks)
        assert net["flow_init_summary"]["first_block_input"] == blocks[0]["input"]
    # Both networks started from the same seed and saw the same batch for the flow measurement, but
    # their graphs differ, so the gradients must too.
    assert (
        saved["networks"]["plain8"]["flow_init"]["blocks"][0]["input"]
        != saved["networks"]["resnet8"]["flow_init"]["blocks"][0]["input"]
    )
    assert any("[resnet8] done" in line for line in lines)


def test_command_line_reuses_finished_networks_and_checks_depths(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--depths", "8", "--epochs", "1", "--train-limit", "64", "--out", str(out), "--work", str(work)]
    assert D.main([*args, "--kinds", "plain"]) == 0
    first = json.loads((work / "plain8" / "degradation.json").read_text())
    assert not (work / "resnet8").exists()
    assert D.main([*args, "--kinds", "resnet"]) == 0
    assert D.main([*args, "--reuse"]) == 0  # combines both without training again
    captured = capsys.readouterr().out
    assert "reusing" in captured and "| plain8 |" in captured and "| resnet8 |" in captured
    combined = json.loads((out / "results.json").read_text())
    assert combined["networks"]["plain8"]["history"] == first["history"]

    with pytest.raises(SystemExit) as stop:  # a mistake in the options: argparse's error, exit 2
        D.main(["--depths", "10", "--out", str(out), "--work", str(work)])
    assert stop.value.code == 2 and "6n + 2 layers" in capsys.readouterr().err


def test_checkpoints_land_inside_the_out_folder_by_default(tmp_path, monkeypatch):
    """Without --work, every file goes under --out (the training runs in OUT/runs), none in the current folder."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "named"
    assert D.main(["--depths", "8", "--kinds", "plain", "--epochs", "1", "--train-limit", "64", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named"]
    assert (out / "runs" / "plain8" / "checkpoint.npz").is_file()


def test_quick_recipe_is_short_and_shares_the_full_recipe():
    args = D._parser().parse_args(["--quick"])
    recipe = {**D.RECIPE, **D.recipe_from_args(args)}
    assert recipe["epochs"] == D.QUICK["epochs"] < D.RECIPE["epochs"]
    assert {k: v for k, v in recipe.items() if k not in ("epochs", "milestones")} == {
        k: v for k, v in D.RECIPE.items() if k not in ("epochs", "milestones")
    }
    args = D._parser().parse_args(["--epochs", "20"])
    assert D.recipe_from_args(args)["milestones"] == [10, 15]

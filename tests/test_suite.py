"""experiments/suite.py: its analysis on hand-built trial tables (the chosen trial, compute with the search,
time to target, performance profiles, the AlgoPerf score), and its documented commands at smoke size."""

from __future__ import annotations

import gzip
import io
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import suite  # noqa: E402
from script_runner import run_script  # noqa: E402


def trial(strategy: str, seed: int, trial_id: str, started: float, vals: list[float], tests: list[float],
          epoch_s: float = 1.0) -> list[dict]:
    return [{"strategy": strategy, "seed": seed, "trial_id": trial_id, "method": "fixed", "epoch": e + 1,
             "step": 10 * (e + 1), "val/acc": v, "test/acc": t, "time/total_s": epoch_s * (e + 1),
             "time/started_at": started, "lr": 0.1, "lr_scale": 0.1}
            for e, (v, t) in enumerate(zip(vals, tests, strict=True))]


@pytest.fixture
def trials() -> pd.DataFrame:
    rows = (trial("grid", 0, "a", 0.0, [0.5, 0.6], [0.4, 0.5])
            + trial("grid", 0, "b", 1.0, [0.7, 0.9, 0.8], [0.6, 0.85, 0.8])
            + trial("one", 0, "c", 0.0, [0.95, 0.5], [0.9, 0.45], epoch_s=2.0))
    return pd.DataFrame(rows)


def test_a_searcher_is_read_at_its_chosen_trial_with_all_its_compute(trials: pd.DataFrame) -> None:
    rows = suite.seed_rows(trials).set_index("strategy")
    grid, one = rows.loc["grid"], rows.loc["one"]
    assert (grid.trials, grid.best_val, grid.test_at_best, grid.test_last) == (2, 0.9, 0.85, 0.8)
    assert grid.compute_s == 2.0 + 3.0 and grid.collapsed  # its last epoch 0.8 is 10 points below its best
    assert one.collapsed and one.test_last == 0.45 and one.compute_s == 4.0


def test_time_to_target_counts_the_search_before_the_reaching_trial(trials: pd.DataFrame) -> None:
    times = suite.time_to_target(trials, target=0.9).set_index("strategy")["time_s"]
    assert times["grid"] == 2.0 + 2.0  # all of trial a, then b's first two epochs
    assert times["one"] == 2.0
    assert math.isinf(suite.time_to_target(trials, target=0.99)["time_s"].iloc[0])


def test_performance_profile_and_the_algoperf_score() -> None:
    times = pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, np.inf]}, index=["w1", "w2"])
    taus = np.linspace(1.0, 4.0, 301)
    profile = suite.performance_profile(times, taus)
    assert profile["a"].iloc[0] == 1.0 and profile["b"].iloc[0] == 0.0
    assert profile.loc[taus[taus >= 2.0][0], "b"] == 0.5  # b is 2x the best on w1, never on w2
    score = suite.algoperf_score(profile)
    assert score["a"] == pytest.approx(1.0) and score["b"] == pytest.approx(0.5 * 2.0 / 3.0, abs=0.01)


def test_a_cell_command_resumes_an_existing_run(tmp_path: Path) -> None:
    cmd = suite.cell_command("digits_mlp", 3600, tmp_path)
    assert cmd[-2:] == ["--output", str(tmp_path / "digits_mlp-h3600")] and "train.epochs=90" in cmd
    (tmp_path / "digits_mlp-h3600").mkdir()
    (tmp_path / "digits_mlp-h3600" / "config.yaml").write_text("{}")
    assert suite.cell_command("digits_mlp", 3600, tmp_path)[-1] == "--resume"


@pytest.mark.ray
@pytest.mark.slow
def test_the_documented_commands_run_at_smoke_size(ray_local: None, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`suite.py run` (one epoch, one seed: every row of the horizon study through rthpo compare) and
    `suite.py report`, which writes docs/horizon.md and its figures from the run files. Both run in this
    process, the cell's ``python -m ray_rthpo.cli compare`` too, on the session's Ray
    (tests/script_runner.py)."""
    out, docs = tmp_path / "runs", tmp_path / "docs"
    script = REPO / "experiments" / "suite.py"
    rc = run_script(script, ["run", "--workloads", "horizon_digits", "--horizons", "360", "--seeds", "1",
                             "--epochs", "1", "--out", str(out)], cwd=tmp_path)
    assert rc == 0, capsys.readouterr().out[-3000:]
    rc = run_script(script, ["report", "--out", str(out), "--docs", str(docs)])
    assert rc == 0, capsys.readouterr().out[-3000:]
    text = (docs / "horizon.md").read_text()
    assert "## horizon_digits, 360 steps" in text and "sgd_sqrt1_cheap_tf25_hi" in text
    assert (docs / "suite" / "horizon_digits-h360_lr.png").stat().st_size > 1000
    # the cell's run file is kept (the columns the report reads, gzipped) beside the documents: a checkout
    # without runs/ regenerates the same documents from it; one that has neither refuses to drop the cell
    kept = docs / "suite" / "cells" / "horizon_digits-h360.csv.gz"
    archived = pd.read_csv(io.BytesIO(gzip.decompress(kept.read_bytes())))
    ran = pd.read_csv(out / "horizon_digits-h360" / "trials.csv")
    assert list(archived.columns) == [c for c in suite.ARCHIVED_COLUMNS if c in ran]
    assert len(archived) == len(ran)
    assert archived["val/acc"].tolist() == ran["val/acc"].tolist()
    assert archived["lr"].to_numpy() == pytest.approx(ran["lr"].to_numpy(), rel=1e-6)
    shutil.move(out, tmp_path / "saved")
    assert run_script(script, ["report", "--out", str(out), "--docs", str(docs)]) == 0
    assert (docs / "horizon.md").read_text() == text
    kept.unlink()
    capsys.readouterr()
    assert run_script(script, ["report", "--out", str(out), "--docs", str(docs)]) == 2
    assert "horizon_digits h360 (horizon.md)" in capsys.readouterr().err
    assert "## horizon_digits, 360 steps" in (docs / "horizon.md").read_text()  # left as it was
    # a cell run later (here: the same run files back) is kept even while the documents cannot be rewritten
    listed = text.replace("## horizon_digits, 360 steps", "## horizon_digits, 3600 steps")
    (docs / "horizon.md").write_text(listed)
    shutil.copytree(tmp_path / "saved", out)
    assert run_script(script, ["report", "--out", str(out), "--docs", str(docs)]) == 2
    assert kept.is_file()


def test_only_a_cell_that_ran_to_its_end_is_complete(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "digits_mlp-h360"
    folder.mkdir()
    (folder / "trials.csv").write_text("strategy\n")
    assert not suite.cell_complete(folder)  # running: no summary yet
    (folder / "summary.md").write_text("# done\n")
    os.utime(folder / "trials.csv", (1_000_000, 1_000_000))
    assert suite.cell_complete(folder)
    os.utime(folder / "trials.csv", (2_000_000_000, 2_000_000_000))
    assert not suite.cell_complete(folder)  # resumed: trials.csv written after the old summary


def test_the_readme_block_states_the_profile_from_the_scores(tmp_path: Path) -> None:
    score = pd.Series({"optuna_adamw": 0.7, "rthpo_sgd_mid": 0.3, "rthpo_adamw_lo": 0.05, "prodigy": 0.2,
                       "schedule_free_sgd": 0.35, "grid_sgd": 0.1})
    text = suite.profile_sentence(score, 4)
    assert text.startswith("Over 4 cells") and "optuna_adamw's, 0.70" in text
    assert "rthpo_sgd_mid, scores 0.30, at or above 1 of the 2 learning-rate-free peers" in text
    assert "(best peer: schedule_free_sgd, 0.35)" in text and "above the grids" in text
    assert "weakest default row, rthpo_adamw_lo, scores 0.05" in text
    own = suite.profile_sentence(score.drop("optuna_adamw").replace({0.3: 0.5}), 4)  # a default row is best
    assert "is rthpo_sgd_mid's, 0.50; that is RT-HPO's best untuned row, at or above 2 of the 2 " in own
    readme = tmp_path / "README.md"
    assert not suite.write_readme_block(readme, "docs/suite/profile.png", text)  # no file: nothing written
    start, end = suite.README_MARKERS
    readme.write_text(f"# x\n\n{start}\nold\n{end}\n\nafter\n")
    assert suite.write_readme_block(readme, "docs/suite/profile.png", text)
    new = readme.read_text()
    assert "old" not in new and new.endswith("\n\nafter\n") and "](docs/suite/profile.png)" in new
    assert all(len(line) <= 110 for line in new.splitlines())
    block = new.split(start)[1].split(end)[0]
    assert " ".join(block.split()[5:]).startswith("Over 4 cells")


def test_the_readme_carries_the_suite_block() -> None:
    text = (REPO / "README.md").read_text()
    start, end = suite.README_MARKERS
    assert text.count(start) == 1 and text.count(end) == 1
    assert "docs/suite/profile.png" in text.split(start)[1].split(end)[0]


def test_the_targets_hold_each_default_row_against_its_grid_and_the_lm_by_validation_loss() -> None:
    def rows(strategy: str, val_loss: float, test: float, vals: list[float]) -> list[dict]:
        return [{**r, "strategy": strategy, "val/loss": val_loss + 0.1 * (len(vals) - 1 - i)}
                for i, r in enumerate(trial(strategy, 0, strategy, 0.0, vals, [test] * len(vals)))]

    digits = pd.DataFrame(rows("grid_sgd", 0.5, 0.970, [0.9, 0.95])
                          + rows("rthpo_sgd_lo", 0.5, 0.961, [0.9, 0.95])
                          + rows("rthpo_sgd_mid", 0.5, 0.959, [0.95, 0.9]))
    # the LM: the grid's best validation loss 2.0; 2.039 is within 2%, 2.041 is not (whatever the accuracy)
    lm = pd.DataFrame(rows("grid_adamw", 2.0, 0.40, [0.3, 0.4])
                      + rows("rthpo_adamw_lo", 2.039, 0.30, [0.3, 0.3])
                      + rows("rthpo_adamw_mid", 2.041, 0.41, [0.3, 0.41]))
    table = suite.target_rows({("digits_mlp", 360): digits, ("char_lm_adamw", 200): lm}).set_index("row")
    assert table.loc["rthpo_sgd_lo", "met"] and not table.loc["rthpo_sgd_mid", "met"]  # 0.9 pt vs 1.1 pt
    assert table.loc["rthpo_sgd_mid", "collapses"] == 1 and table.loc["rthpo_sgd_lo", "collapses"] == 0
    assert table.loc["rthpo_adamw_lo", "metric"] == "val loss"
    assert table.loc["rthpo_adamw_lo", "value"] == pytest.approx(2.039)
    assert table.loc["rthpo_adamw_lo", "met"] and not table.loc["rthpo_adamw_mid", "met"]
    text = "\n".join(suite.targets({("digits_mlp", 360): digits, ("char_lm_adamw", 200): lm}))
    assert "2 of 4 (default row, cell) pairs" in text and "1 of 4 default runs collapsed" in text
    assert "| char_lm_adamw h200 | rthpo_adamw_mid | val loss | 2.0410 | 2.0000 | NOT met | 0 |" in text


def test_a_cell_is_read_from_its_finished_run_then_its_copy_then_an_unfinished_run(tmp_path: Path) -> None:
    import os

    out, archive = tmp_path / "runs", tmp_path / "cells"
    assert suite.cell_source(out, "digits_mlp", 360, archive) is None
    folder = suite.cell_dir(out, "digits_mlp", 360)
    folder.mkdir(parents=True)
    (folder / "trials.csv").write_text("strategy\n")
    assert suite.cell_source(out, "digits_mlp", 360, archive) == ("unfinished", folder / "trials.csv")
    kept = suite.archive_path(archive, "digits_mlp", 360)
    archive.mkdir()
    kept.write_bytes(b"")
    assert suite.cell_source(out, "digits_mlp", 360, archive) == ("kept", kept)
    (folder / "summary.md").write_text("# done\n")
    os.utime(folder / "trials.csv", (1_000_000, 1_000_000))
    assert suite.cell_source(out, "digits_mlp", 360, archive) == ("run", folder / "trials.csv")


def test_the_cost_target_is_read_from_the_committed_step_cost_measurement(tmp_path: Path) -> None:
    lines = suite.cost_lines(REPO / "docs")
    text = "\n".join(lines)
    assert suite.COST_COMMAND in text and "| model | base | tuning step (cheap) |" in text
    assert any(line.startswith("| mlp | sgd | ") and line.endswith(("| met |", "| NOT met |"))
               for line in lines)
    assert suite.COST_COMMAND in (REPO / "docs" / "performance.md").read_text().replace('"', "'")
    assert suite.cost_lines(tmp_path) == []  # no measurement beside these docs: no cost lines


def test_the_targets_sentence_counts_the_pairs_the_misses_by_start_and_the_collapses(tmp_path: Path) -> None:
    table = pd.DataFrame([
        {"cell": "digits_mlp h360", "row": "rthpo_sgd_lo", "met": True, "runs": 3, "collapses": 0},
        {"cell": "digits_mlp h360", "row": "rthpo_sgd_hi", "met": False, "runs": 3, "collapses": 1},
        {"cell": "char_lm_adamw h200", "row": "rthpo_adamw_hi", "met": False, "runs": 2, "collapses": 0},
        {"cell": "char_lm_adamw h200", "row": "rthpo_adamw_mid", "met": True, "runs": 2, "collapses": 0}])
    text = suite.targets_sentence(table, ["char_lm_adamw h200", "digits_mlp h360"])
    assert text.startswith("Over 2 cells (2 workloads: char_lm_adamw, digits_mlp)")
    assert "in 2 of their 4 (start, base, cell) pairs" in text
    assert "the 2 misses are 0 from a tenth of the tuned peak, 0 from the peak, 2 from ten times it" in text
    assert "1 of their 10 runs collapse late" in text
    doc = tmp_path / "method.md"
    assert not suite.write_block(doc, suite.METHOD_MARKERS, text)
    start, end = suite.METHOD_MARKERS
    doc.write_text(f"a\n{start}\nold\n{end}\nb\n")
    assert suite.write_block(doc, suite.METHOD_MARKERS, "new")
    assert doc.read_text() == f"a\n{start}\nnew\n{end}\nb\n"


def test_method_md_carries_the_targets_block() -> None:
    text = (REPO / "docs" / "method.md").read_text()
    start, end = suite.METHOD_MARKERS
    assert text.count(start) == 1 and text.count(end) == 1


def test_a_part_replaces_the_row_seed_pairs_it_holds_and_keeps_the_others() -> None:
    before = pd.DataFrame(trial("grid", 0, "a", 0.0, [0.5], [0.4]) + trial("one", 0, "c", 0.0, [0.6], [0.5]))
    part = pd.DataFrame(trial("one", 0, "d", 5.0, [0.9], [0.8]) + trial("one", 1, "e", 5.0, [0.7], [0.6]))
    merged = suite.merge_pairs([before, part])
    assert sorted(zip(merged["strategy"], merged["seed"], merged["trial_id"], strict=True)) == [
        ("grid", 0, "a"), ("one", 0, "d"), ("one", 1, "e")]
    with pytest.raises(ValueError, match="at least one frame"):
        suite.merge_pairs([])


def test_a_cell_lacks_the_rows_and_the_seeds_its_config_has_and_it_does_not() -> None:
    rows = suite.config_strategies("char_lm_adamw")
    assert rows[0] == "rthpo_adamw_lo" and "grid_adamw" in rows and "grid_sgd" not in rows
    whole = pd.DataFrame([r for name in rows for r in trial(name, 0, f"{name}-0", 0.0, [0.5], [0.5])])
    assert suite.missing_rows(whole, "char_lm_adamw") == []
    lacking = pd.concat([whole[whole["strategy"] != "dog"],
                         pd.DataFrame(trial("prodigy", 1, "p1", 0.0, [0.5], [0.5]))])
    missing = suite.missing_rows(lacking, "char_lm_adamw")
    assert "dog" in missing and "rthpo_adamw_lo (seed 1)" in missing
    assert not any("prodigy" in m for m in missing)


def test_a_part_of_a_cell_is_one_row_or_more_seeds_in_a_folder_of_its_own(tmp_path: Path) -> None:
    cmd = suite.cell_command("cifar10_cnn", 2500, tmp_path, seeds=1, strategies=["grid_sgd", "dog"])
    folder = tmp_path / "cifar10_cnn-h2500" / "parts" / "grid_sgd+dog-seeds0-0"
    assert cmd[3:8] == ["compare", str(REPO / "configs" / "suite" / "cifar10_cnn.yaml"), "--strategies",
                        "grid_sgd", "dog"]
    assert cmd[-2:] == ["--output", str(folder)] and "train.epochs=10" in cmd
    cmd = suite.cell_command("mnist_mlp", 4210, tmp_path, seeds=2, first_seed=1)
    assert cmd[3] == "compare" and "seed=1" in cmd and cmd[cmd.index("--seeds") + 1] == "2"
    assert suite.config_seeds("mnist_mlp") == (0, 0) and "train.seed=1" in cmd  # repetition 1's seeds
    assert cmd[-1] == str(tmp_path / "mnist_mlp-h4210" / "parts" / "all-seeds1-2")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("{}")
    assert suite.cell_command("cifar10_cnn", 2500, tmp_path, seeds=1,
                              strategies=["grid_sgd", "dog"])[-1] == "--resume"
    rows = suite.config_strategies("cifar10_cnn")
    every = suite.part_dir(tmp_path, "cifar10_cnn", 2500, strategies=rows, first_seed=0, seeds=1)
    assert every.name.startswith(f"{len(rows)}rows-") and every.name.endswith("-seeds0-0")
    with pytest.raises(SystemExit, match="no row 'grid_sdg'"):
        suite.main(["run", "--workloads", "cifar10_cnn", "--strategies", "grid_sdg", "--out", str(tmp_path)])


def test_a_cell_is_assembled_from_its_copy_and_the_parts_that_ran_to_their_end(tmp_path: Path) -> None:
    import os

    out, archive = tmp_path / "runs", tmp_path / "cells"
    kept = suite.archive_path(archive, "digits_mlp", 360)
    archive.mkdir()
    pd.DataFrame(trial("grid_sgd", 0, "a", 0.0, [0.5], [0.4])).to_csv(kept, index=False)
    assert suite.load_cell(out, "digits_mlp", 360, archive)[1] == "kept"
    done = suite.part_dir(out, "digits_mlp", 360, strategies=["grid_sgd"], first_seed=1, seeds=1)
    going = suite.part_dir(out, "digits_mlp", 360, strategies=["dog"], first_seed=0, seeds=1)
    for folder, row, seed in ((done, "grid_sgd", 1), (going, "dog", 0)):
        folder.mkdir(parents=True)
        pd.DataFrame(trial(row, seed, f"{row}{seed}", 0.0, [0.6], [0.5])).to_csv(folder / "trials.csv",
                                                                                  index=False)
    (done / "summary.md").write_text("# done\n")
    os.utime(done / "trials.csv", (1_000_000, 1_000_000))
    frame, kind = suite.load_cell(out, "digits_mlp", 360, archive)
    assert kind == "assembled"  # the finished part is merged with the copy, the running one is not
    assert sorted(zip(frame["strategy"], frame["seed"], strict=True)) == [("grid_sgd", 0), ("grid_sgd", 1)]
    assert suite.complete_parts(out, "digits_mlp", 360) == [done]


def test_a_partial_cell_is_shown_but_left_out_of_the_targets_and_kept(tmp_path: Path) -> None:
    """report over one kept cell that lacks a row: the cell's table is written, marked partial with what it
    lacks, and no targets or scores are computed from it."""
    docs, out = tmp_path / "docs", tmp_path / "runs"
    cells = docs / "suite" / "cells"
    cells.mkdir(parents=True)
    source = REPO / "docs" / "suite" / "cells" / "tabular_mlp-h330.csv.gz"
    whole = pd.read_csv(source)
    whole[whole["strategy"] != "dog"].to_csv(cells / "tabular_mlp-h330.csv.gz", index=False)
    assert suite.main(["report", "--out", str(out), "--docs", str(docs), "--allow-missing"]) == 0
    text = (docs / "suite.md").read_text()
    assert "| tabular_mlp (PARTIAL: 1 row to run) | 330 |" in text
    assert "tabular_mlp h330 is partial" in text and "To run: dog." in text
    assert "## tabular_mlp, 330 steps" in text and "## Targets" not in text
    shutil.copy(source, cells / "tabular_mlp-h330.csv.gz")
    assert suite.main(["report", "--out", str(out), "--docs", str(docs), "--allow-missing"]) == 0
    text = (docs / "suite.md").read_text()
    assert "PARTIAL" not in text and "## Targets" in text


def test_the_scale_moves_are_the_end_over_the_rows_own_start() -> None:
    def run(strategy: str, seed: int, scale: float) -> list[dict]:
        return [{**r, "lr_scale": scale}
                for r in trial(strategy, seed, f"{strategy}{seed}", 0.0, [0.9], [0.9])]

    lo, hi = suite.start_scale("mnist_mlp", "rthpo_sgd_lo"), suite.start_scale("mnist_mlp", "rthpo_adamw_hi")
    assert (lo, hi) == (0.01, 3.16e-2)  # configs/suite/mnist_mlp.yaml's lr.eta0 of the two rows
    cell = pd.DataFrame(run("rthpo_sgd_lo", 0, 0.02) + run("rthpo_sgd_lo", 1, 0.04)
                        + run("rthpo_sgd_lo", 2, 0.05) + run("rthpo_adamw_hi", 0, 3.16e-3)
                        + run("grid_sgd", 0, 0.1))
    moves = suite.scale_moves({("mnist_mlp", 421): cell})
    assert list(moves.index) == ["rthpo_sgd_lo", "rthpo_adamw_hi"]  # default rows only, in their order
    assert moves.loc["rthpo_sgd_lo", "mnist_mlp h421"] == pytest.approx(4.0)  # median of x2, x4, x5
    assert moves.loc["rthpo_adamw_hi", "mnist_mlp h421"] == pytest.approx(0.1)
    text = " ".join(suite.scale_move_lines(moves)).replace("\n", " ")  # the sentence is wrapped
    assert "lo x4 to x4 (median x4); hi x0.1 to x0.1 (median x0.1)" in text
    assert "| rthpo_sgd_lo | x4 |" in text and "| rthpo_adamw_hi | x0.1 |" in text


def test_a_variant_runs_the_default_rows_under_its_sets_apart_from_the_cell(tmp_path: Path) -> None:
    cmd = suite.cell_command("digits_mlp", 360, tmp_path, variant="no_rollback",
                             strategies=["rthpo_sgd_lo", "rthpo_sgd_hi"])
    at = cmd.index("--strategies")
    assert cmd[at + 1:at + 3] == ["rthpo_sgd_lo", "rthpo_sgd_hi"] and "train.epochs=9" in cmd
    assert "lr.backoff_rollback=false" in cmd
    assert cmd[cmd.index("--seeds") + 1] == "3"  # the cell's seeds: compared run for run with its rows
    folder = tmp_path / "digits_mlp-h360" / "variants" / "no_rollback"
    folder = folder / "rthpo_sgd_lo+rthpo_sgd_hi-seeds0-2"
    assert cmd[-1] == str(folder)
    every = suite.cell_command("char_lm_adamw", 200, tmp_path, variant="average")  # all its default rows
    assert every[every.index("--strategies") + 1:every.index("--set")] == [
        "rthpo_adamw_lo", "rthpo_adamw_mid", "rthpo_adamw_hi"]
    with pytest.raises(SystemExit, match="default rows only; 'grid_sgd' is not one of digits_mlp's"):
        suite.cell_command("digits_mlp", 360, tmp_path, variant="average", strategies=["grid_sgd"])
    with pytest.raises(SystemExit, match="unknown variant 'avg'; choose from average, "):
        suite.cell_command("digits_mlp", 360, tmp_path, variant="avg")
    for variant in suite.VARIANTS.values():  # every variant's sets are settings the configs accept
        from ray_rthpo.experiment.config import load_experiment

        exp = load_experiment(REPO / "configs" / "suite" / "digits_mlp.yaml", list(variant.sets),
                              resolve_data=False)
        lr = exp.run_config(exp.strategy("rthpo_sgd_hi")).lr
        for assignment in variant.sets:
            key, text = assignment.split("=")
            value = getattr(lr, key.split(".")[1])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert value == float(text), (assignment, value)
            else:
                assert str(value).lower() == text, (assignment, value)


def test_a_variant_is_held_against_the_defaults_on_the_same_runs() -> None:
    cell = pd.DataFrame(trial("grid_sgd", 0, "g0", 0.0, [0.9], [0.975])
                        + trial("grid_sgd", 1, "g1", 0.0, [0.9], [0.975])
                        + trial("rthpo_sgd_lo", 0, "l0", 0.0, [0.9], [0.90])
                        + trial("rthpo_sgd_lo", 1, "l1", 0.0, [0.9], [0.99])
                        + trial("rthpo_sgd_hi", 0, "h0", 0.0, [0.9, 0.95], [0.97, 0.97]))
    ran = pd.DataFrame(trial("rthpo_sgd_lo", 0, "v0", 0.0, [0.9], [0.97])
                       + trial("rthpo_sgd_hi", 0, "v1", 0.0, [0.95, 0.9], [0.97, 0.97]))
    table = suite.variant_targets(cell, ran, ("digits_mlp", 360)).set_index("row")
    # the defaults on seed 0 only (0.90, not the mean 0.945 of seeds 0 and 1), the grid over both seeds
    lo, hi = table.loc["rthpo_sgd_lo"], table.loc["rthpo_sgd_hi"]
    assert lo["value"] == pytest.approx(0.90) and not lo["met"]
    assert lo["variant"] == pytest.approx(0.97) and lo["variant_met"]
    assert lo["grid"] == pytest.approx(0.975) and lo["runs"] == 1
    assert hi["collapses"] == 0 and hi["variant_collapses"] == 1 and hi["met"] and hi["variant_met"]
    text = "\n".join(suite.variant_lines("average", [table.reset_index()]))
    assert "over SGD 1 → 2 of 2; late collapses 0 → 1 of 2 runs" in " ".join(text.split())
    assert "test accuracy over those cells' (row, cell) pairs: over SGD +3.5 points (lo +7.0, hi +0.0)." in \
        " ".join(text.split())
    assert ("| digits_mlp h360 | rthpo_sgd_lo | 1 | test % | 90.0 | 97.0 | 97.5 | NOT met → met | 0 → 0 |"
            in text)


def test_report_shows_a_variant_beside_the_whole_cells_and_keeps_its_runs(tmp_path: Path) -> None:
    import os

    docs, out = tmp_path / "docs", tmp_path / "runs"
    cells = docs / "suite" / "cells"
    cells.mkdir(parents=True)
    source = REPO / "docs" / "suite" / "cells" / "tabular_mlp-h330.csv.gz"
    shutil.copy(source, cells / source.name)
    whole = pd.read_csv(source)
    ran = whole[whole["strategy"].isin(["rthpo_sgd_hi"])].copy()
    ran["test/acc"] = 0.25  # the variant's runs: far below the grid
    part = suite.part_dir(out, "tabular_mlp", 330, strategies=["rthpo_sgd_hi"], first_seed=0, seeds=3,
                          variant="no_rollback")
    part.mkdir(parents=True)
    ran.to_csv(part / "trials.csv", index=False)
    (part / "summary.md").write_text("# done\n")
    os.utime(part / "trials.csv", (1_000_000, 1_000_000))
    assert suite.main(["report", "--out", str(out), "--docs", str(docs), "--allow-missing"]) == 0
    text = (docs / "suite.md").read_text()
    assert "## Candidate defaults" in text and "### no_rollback: " in text
    assert "| tabular_mlp h330 | rthpo_sgd_hi | 3 | test % |" in text and "| 25.0 |" in text
    kept = suite.archive_path(suite.variant_archive(cells, "no_rollback"), "tabular_mlp", 330)
    assert kept.is_file()
    own = next(line for line in suite.cell_table(suite.seed_rows(whole))
               if line.startswith("| rthpo_sgd_hi |"))
    assert own in text.split("## tabular_mlp, 330 steps")[1]  # the cell's own rows: the defaults' runs
    assert "25.0" not in own
    shutil.rmtree(out)  # the variant's run files gone: the document is the same from the kept copy
    assert suite.main(["report", "--out", str(out), "--docs", str(docs), "--allow-missing"]) == 0
    assert (docs / "suite.md").read_text() == text

"""compare.py, report.py and sweep.py: statistics, alignment, verdicts, the figure, the files, and
compare's reuse / resume / parallel training through the real training code."""

import csv
import errno
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from resbench import config
from resbench.compare import (
    SEED_SPREAD,
    Row,
    Stat,
    aligned,
    load_run,
    plan,
    single_seed_threshold,
    summarise,
    verdict,
)
from resbench.errors import CompareError, ConfigError, Interrupted, RunDirError
from resbench.report import figure6, write_report
from resbench.rundir import read_summary, run_dir_for
from resbench.train import train

# ------------------------------------------------------------------------------------------
# Fabricated runs: what a finished run leaves on disk, with numbers chosen by the test


def fake_run(
    runs_dir: Path,
    name: str,
    seed: int,
    train_error: float,
    test_error: float,
    every: int = 100,
    iterations: int = 400,
    overrides: tuple[str, ...] = (),
) -> Path:
    cfg = config.load(
        name,
        [
            f"run.seed={seed}",
            f"schedule.iterations={iterations}",
            f"schedule.milestones=[{iterations // 2}]",
            *overrides,
        ],
    )
    run_dir = run_dir_for(cfg, runs_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    lines = []
    for it in range(every, iterations + 1, every):
        frac = it / iterations  # errors fall linearly from 90% to their final value
        lines.append({"iteration": it, "error/train": 90 + (train_error - 90) * frac, "loss/train": 1.0})
        lines.append({"iteration": it, "error/test": 90 + (test_error - 90) * frac, "loss/test": 1.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    summary = {
        "name": cfg.run.name,
        "seed": seed,
        "iterations": iterations,
        "train_error": train_error,
        "train_loss": 1.0,
        "test_error": test_error,
        "test_loss": 1.0,
        "val_error": None,
        "val_loss": None,
        "params": 1000,
        "macs": 1000,
        "wall_time": 60.0,
        "images_per_sec": 100.0,
        "device": "cpu",
        "precision": "fp32",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def records(runs_dir: Path, spec: dict[str, list[tuple[float, float]]]) -> list:
    """{name: [(train_error, test_error) per seed]} -> loaded RunRecords."""
    return [
        load_run(fake_run(runs_dir, name, seed, tr, te))
        for name, values in spec.items()
        for seed, (tr, te) in enumerate(values)
    ]


def row(
    name: str, depth: int, residual: bool, train: list[float], iterations: int = 64_000, num_classes: int = 10
) -> Row:
    s = Stat.of(train)
    return Row(
        name,
        depth,
        "basic",
        residual,
        "A" if residual else None,
        1,
        tuple(range(len(train))),
        s,
        s,
        None,
        False,
        Stat.of([1.0]),
        iterations,
        num_classes,
    )


# ------------------------------------------------------------------------------------------
# Statistics and alignment


def test_stat_mean_and_sample_std_by_hand() -> None:
    s = Stat.of([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3) and s.std == pytest.approx(math.sqrt(7 / 3)) and s.n == 3
    assert Stat.of([5.0]) == Stat(5.0, 0.0, 1)
    assert str(Stat.of([1.0, 3.0])) == "2.00 ± 1.41" and str(Stat.of([2.0])) == "2.00"


def test_curves_logged_at_different_intervals_are_aligned() -> None:
    a = (np.array([100.0, 200, 300, 400]), np.array([80.0, 60, 40, 20]))
    b = (np.array([200.0, 400]), np.array([70.0, 30]))
    grid, mean, std = aligned([a, b])
    assert grid.tolist() == [200, 300, 400]  # the range both cover, at every logged iteration
    assert mean.tolist() == pytest.approx([65, 45, 25])  # b interpolated to 50 at 300
    assert std.tolist() == pytest.approx([math.sqrt(50)] * 3)


def test_seed_aggregation_in_rows_and_curves(tmp_path: Path) -> None:
    report = summarise(records(tmp_path, {"plain20": [(6.0, 9.0), (7.0, 10.0), (8.0, 11.0)]}))
    (r,) = report.rows
    assert (r.train_error.mean, r.train_error.std, r.train_error.n) == (7.0, 1.0, 3)
    assert r.test_error.mean == 10.0 and r.paper_test_error == 9.5 and r.paper_approximate
    assert r.delta_to_paper == pytest.approx(0.5)
    (c,) = report.curves
    assert c.n == 3 and c.test_mean[-1] == pytest.approx(10.0) and c.test_std[-1] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------
# The verdict


def test_verdict_shows_degradation_and_the_fix() -> None:
    rows = [
        row("plain20", 20, False, [6.0, 6.2, 6.4]),
        row("plain56", 56, False, [9.0, 9.1, 9.2]),
        row("resnet56", 56, True, [5.0, 5.1, 4.9]),
    ]
    (deg, fix) = verdict(rows)
    assert (deg.kind, deg.status) == ("degradation", "shown")
    assert deg.text.startswith("Degradation: plain56 trains worse than plain20") and "+2.9 pts" in deg.text
    assert (fix.kind, fix.status) == ("residual fix", "shown") and "-4.1 pts" in fix.text


def test_verdict_says_when_the_data_do_not_show_it() -> None:
    rows = [
        row("plain20", 20, False, [9.0, 9.1]),
        row("plain56", 56, False, [6.0, 6.1]),
        row("resnet56", 56, True, [8.0, 8.1]),
    ]
    deg, fix = verdict(rows)
    assert deg.status == "not shown" and deg.text.startswith("No degradation")
    assert fix.status == "not shown" and fix.text.startswith("No residual fix")


def test_verdict_is_inconclusive_when_seeds_overlap() -> None:
    rows = [row("plain20", 20, False, [6.0, 8.0, 7.0]), row("plain56", 56, False, [7.5, 6.5, 8.5])]
    (deg,) = verdict(rows)
    assert deg.status == "inconclusive" and "within seed noise" in deg.text


def test_single_seeds_need_more_than_the_usual_seed_spread() -> None:
    assert (
        verdict([row("plain20", 20, False, [6.0]), row("plain56", 56, False, [6.3])])[0].status
        == "inconclusive"
    )
    assert verdict([row("plain20", 20, False, [6.0]), row("plain56", 56, False, [7.0])])[0].status == "shown"


@pytest.mark.parametrize(
    ("plain56", "status"), [([6.3, 6.3, 6.3], "inconclusive"), ([7.0, 7.0, 7.0], "shown")]
)
def test_seeds_that_agree_exactly_do_not_make_every_difference_real(
    plain56: list[float], status: str
) -> None:
    """Defect 7: zero spread over seeds gave a noise estimate of 0, so +0.3 pts read as shown."""
    (deg,) = verdict([row("plain20", 20, False, [6.0, 6.0, 6.0]), row("plain56", 56, False, plain56)])
    assert deg.status == status and deg.threshold == SEED_SPREAD
    assert "Threshold 0.5 pts: the floor" in deg.text


def test_the_single_seed_threshold_grows_for_short_runs() -> None:
    assert single_seed_threshold(64_000) == single_seed_threshold(128_000) == SEED_SPREAD
    assert single_seed_threshold(2_000) == pytest.approx(0.5 * math.sqrt(32))  # 2.83
    rows = [row("plain20", 20, False, [60.0], 2_000), row("plain56", 56, False, [62.0], 2_000)]
    (deg,) = verdict(rows)  # 2 pts would be shown at 64k, but not after 2,000 iterations
    assert deg.status == "inconclusive" and deg.threshold == pytest.approx(2.83, abs=0.01)
    assert deg.text.endswith("Threshold 2.8 pts: the expected one-seed spread at 2,000 iterations.")


@pytest.mark.parametrize(("iterations", "floor"), [(64_000, 0.5), (2_000, 1.63), (150, 5.96)])
def test_the_floor_of_several_seeds_follows_the_run_length(iterations: int, floor: float) -> None:
    """Three seeds that happen to agree within 0.1 points had the fixed 0.5 floor at any length,
    while one seed each needs 10.3 points at 150 iterations: the floor is the single-seed threshold times
    sqrt((1/3 + 1/3) / 2), and never under SEED_SPREAD."""
    rows = [
        row("plain20", 20, False, [60.0, 60.1, 60.0], iterations),
        row("plain56", 56, False, [61.5, 61.5, 61.6], iterations),
    ]
    (deg,) = verdict(rows)
    expected = max(single_seed_threshold(iterations) * math.sqrt(1 / 3), SEED_SPREAD)
    assert deg.threshold == pytest.approx(expected) == pytest.approx(floor, abs=0.01)
    assert deg.status == ("shown" if iterations == 64_000 else "inconclusive")
    assert "Threshold" in deg.text and "the floor" in deg.text
    if iterations < 64_000:
        assert deg.text.endswith(f"the expected one-seed spread at {iterations:,} iterations, for 3 seeds.")
    one_each = [row("plain20", 20, False, [60.0], iterations), row("plain56", 56, False, [62.0], iterations)]
    (single,) = verdict(one_each)
    assert single.threshold == pytest.approx(single_seed_threshold(iterations))  # one seed each: factor 1


def test_a_single_seed_model_borrows_the_spread_of_models_with_seeds() -> None:
    """Two seeds of plain20 differ by 2.8 points: a 2.6-point gap to a one-seed plain56 is noise,
    even on the full schedule where the single-seed threshold would be 0.5."""
    rows = [row("plain20", 20, False, [60.0, 62.8]), row("plain56", 56, False, [64.0])]
    (deg,) = verdict(rows)
    spread = Stat.of([60.0, 62.8]).std
    assert deg.threshold == pytest.approx(2 * math.sqrt(spread**2 / 2 + spread**2 / 1))
    assert deg.status == "inconclusive" and "1 and 2 seeds" in deg.text and "pooled" in deg.text


def test_nets_at_chance_level_have_not_shown_anything(tmp_path: Path) -> None:
    """The issue's 150-iteration compare: plain-56 (88.8%) and ResNet-56 (88.1%) sit at chance (90%)
    on CIFAR-10, so neither the degradation nor the residual fix is shown, whatever the gaps."""
    spec = {"plain20": (64.8, 63.0), "plain56": (88.8, 88.5), "resnet56": (88.1, 87.9)}
    runs = [
        load_run(fake_run(tmp_path, name, 0, tr, te, every=50, iterations=150))
        for name, (tr, te) in spec.items()
    ]
    report = summarise(runs)
    deg, fix = report.findings
    assert (deg.kind, deg.status, deg.reason) == ("degradation", "inconclusive", "not trained yet")
    assert deg.text.startswith("Degradation: not trained yet. plain56 is within 5 pts of chance (90.0%")
    assert (fix.kind, fix.status, fix.reason) == ("residual fix", "inconclusive", "not trained yet")
    assert "resnet56 and plain56 are within 5 pts of chance" in fix.text
    assert any("plain56, resnet56 are within 5 points of chance" in n for n in report.notes)
    lines = {line.get_label(): line for line in figure6(report).axes[1].lines}
    assert lines["chance (90%)"].get_ydata()[0] == 90 and lines["chance (90%)"].get_linestyle() == ":"


@pytest.mark.parametrize(
    ("train_error", "num_classes", "near"),
    [(84.9, 10, False), (85.0, 10, True), (90.0, 100, False), (95.0, 100, True)],
)
def test_chance_follows_the_class_count(train_error: float, num_classes: int, near: bool) -> None:
    assert row("plain20", 20, False, [train_error], num_classes=num_classes).near_chance is near


def test_deeper_resnets_are_judged_too() -> None:
    (f,) = verdict([row("resnet20", 20, True, [3.0, 3.1]), row("resnet56", 56, True, [1.0, 1.1])])
    assert (f.kind, f.status) == ("deeper resnet", "shown")


def test_short_schedules_and_single_seeds_get_a_note(tmp_path: Path) -> None:
    report = summarise(records(tmp_path, {"plain20": [(30.0, 29.0)], "plain56": [(74.0, 71.0)]}))
    assert any("400 iterations" in n and "does not reach" in n for n in report.notes)
    assert any("single seed" in n for n in report.notes)


# ------------------------------------------------------------------------------------------
# Errors


def test_mixing_datasets_names_the_conflicting_runs(tmp_path: Path) -> None:
    a = load_run(fake_run(tmp_path, "plain20", 0, 6, 9))
    b = load_run(
        fake_run(tmp_path, "plain56", 0, 9, 13, overrides=("data.dataset=cifar100", "model.num_classes=100"))
    )
    with pytest.raises(
        CompareError,
        match=r"plain20/.*/seed0 and .*plain56/.*/seed0 were not trained alike "
        r"\(data\.dataset: cifar10 vs cifar100",
    ):
        summarise([a, b])  # each model has one dataset: not a sweep over data.dataset


def test_a_run_without_metrics_is_named(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "plain20", 0, 6, 9)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(CompareError, match=r"no metrics\.jsonl"):
        load_run(run)
    with pytest.raises(RunDirError, match="not a run directory"):  # exit 1, as in analyze and evaluate
        load_run(tmp_path)


FAKE_SETS = ["schedule.iterations=400", "schedule.milestones=[200]"]  # what fake_run trains with
FAKE_DIR = "schedule.iterations=400,schedule.milestones=[200]"  # the folder these overrides name


def test_plan_reuses_finished_runs_and_refuses_one_with_another_config(tmp_path: Path) -> None:
    fake_run(tmp_path, "plain20", 0, 6, 9)
    (p,) = plan(["plain20"], [0], FAKE_SETS, None, tmp_path)
    assert p.state == "finished" and p.run_dir == tmp_path / "plain20" / FAKE_DIR / "seed0"
    assert [q.state for q in plan(["plain20"], [0, 1], FAKE_SETS, None, tmp_path)] == ["finished", "empty"]
    # another config under an explicit run.name lands on the run: refused, naming the key
    fake_run(tmp_path, "plain20", 0, 6, 9, overrides=("run.name=mine",))
    with pytest.raises(ConfigError, match=r"differs in optim\.lr"):
        plan(["plain20"], [0], [*FAKE_SETS, "run.name=mine", "optim.lr=0.05"], None, tmp_path)
    run = tmp_path / "plain20" / FAKE_DIR / "seed0"
    assert plan([str(run)], [5], [], None, tmp_path)[0].cfg.run.seed == 0


def fake_sets(*extra: str) -> list[str]:
    return [a for s in [*FAKE_SETS, *extra] for a in ("--set", s)]


def test_one_run_named_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted twice: a run directory and the config that maps to it, or two spellings of one path,
    gave "88.75 ± 0.00" over one run."""
    monkeypatch.chdir(tmp_path)
    run = fake_run(Path("runs"), "plain20", 0, 6, 9)
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(run))} and plain20 seed 0 both name the run directory"
    ):
        plan([str(run), "plain20"], [0], FAKE_SETS, None, Path("runs"))
    spellings = [str(run), str(tmp_path / run) + "/"]
    with pytest.raises(ConfigError, match=r"would count twice\. Name each run once"):
        plan(spellings, [0], [], None, Path("runs"))
    with pytest.raises(ConfigError, match=r"plain20 seed 0 and configs/plain20\.yaml seed 0"):
        plan(["plain20", "configs/plain20.yaml"], [0], FAKE_SETS, None, Path("runs"))


def test_a_run_killed_before_its_first_checkpoint_is_refused_not_wiped(cli, tmp_path: Path) -> None:
    """Its metrics describe weights that were never saved: compare names the run and the command
    that starts it over, and deletes nothing itself."""
    run = tmp_path / "plain20" / FAKE_DIR / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"iteration": 10, "error/train": 80.0}\n')
    result = cli("compare", "plain20", "--runs-dir", tmp_path, *fake_sets(), "--out", tmp_path / "r")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "stopped before their first checkpoint" in result.stderr
    # it has no config.yaml, so `--config RUN/config.yaml` would not start it: CONFIG stands for its config
    expected = f"--config CONFIG --runs-dir {tmp_path} --force, with CONFIG the config of {run}"
    assert expected in result.stderr.replace("\n", "")
    assert (run / "metrics.jsonl").read_text().startswith('{"iteration": 10')


def test_cli_refuses_a_run_named_twice(cli, tmp_path: Path) -> None:
    run = fake_run(tmp_path, "plain20", 0, 6, 9)
    result = cli("compare", run, f"{run}/../seed0", "--no-train", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "would count twice" in result.stderr and "Traceback" not in result.output


def test_another_config_on_an_existing_run_name_says_how_to_keep_both(cli, tmp_path: Path) -> None:
    """Defect 9: another config that maps to a finished run's directory (here under one explicit
    run.name; `--set optim.lr=0.05` alone now names a directory of its own) is refused, and the
    refusal says how to get a run of its own."""
    fake_run(tmp_path, "plain20", 0, 6, 9, overrides=("run.name=mine",))
    result = cli("compare", "plain20", "--runs-dir", tmp_path, *fake_sets("run.name=mine", "optim.lr=0.05"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "differs in optim.lr" in result.stderr
    assert "--set run.name=NAME" in result.stderr and "--runs-dir" in result.stderr
    (p,) = plan(["plain20"], [0], [*FAKE_SETS, "optim.lr=0.05", "run.name=plain20-lr05"], None, tmp_path)
    assert (p.state, p.run_dir) == ("empty", tmp_path / "plain20-lr05" / "seed0")  # the advice works
    (q,) = plan(["plain20"], [0], [*FAKE_SETS, "optim.lr=0.05"], None, tmp_path)
    assert (q.state, q.run_dir) == ("empty", tmp_path / "plain20" / f"optim.lr=0.05,{FAKE_DIR}" / "seed0")


BROKEN = {
    "metrics.jsonl: a garbage line": ("metrics.jsonl", "append", "not json\n"),
    "metrics.jsonl: binary": ("metrics.jsonl", "write", "\x00\xff\xfe garbage"),
    "summary.json: not JSON": ("summary.json", "write", "{'train_error': 5"),
    "summary.json: a field missing": ("summary.json", "drop", "test_error"),
    "env.json: not JSON": ("env.json", "write", "torch 2.4"),
    "env.json: not an object": ("env.json", "write", "[1, 2]"),
}


@pytest.mark.parametrize("how", ["--no-train", "by name"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_damaged_run_file_is_one_message(cli, tmp_path: Path, case: str, how: str) -> None:
    run = fake_run(tmp_path / "runs", "plain20", 0, 6, 9)
    name, action, text = BROKEN[case]
    path = run / name
    if action == "append":
        path.write_text(path.read_text() + text)
    elif action == "drop":
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != text}))
    else:
        path.write_text(text, errors="surrogateescape")
    what = (
        [run, "--no-train"]
        if how == "--no-train"
        else ["plain20", "--runs-dir", tmp_path / "runs", *fake_sets()]
    )
    result = cli("compare", *what, "--out", tmp_path / "r")
    assert not isinstance(result.exception, Exception), result.output  # a message, not a crash
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    assert str(path) in result.stderr and "damaged" in result.stderr
    assert not (tmp_path / "r").exists()  # no report from a damaged run


def test_a_report_folder_that_cannot_be_written_is_one_message(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = fake_run(tmp_path / "runs", "plain20", 0, 6, 9)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    as_file = cli("compare", run, "--no-train", "--out", blocker)
    assert as_file.exit_code == 1 and f"cannot write the report to {blocker}: it is a file" in as_file.stderr
    assert blocker.read_text() == "keep me" and "Traceback" not in as_file.output
    below_file = cli("compare", run, "--no-train", "--out", blocker / "report")
    assert below_file.exit_code == 1 and "Not a directory" in below_file.stderr

    out = tmp_path / "report"
    assert cli("compare", run, "--no-train", "--out", out).exit_code == 0
    before = (out / "summary.md").read_text()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("resbench.report.atomic_write", full)
    no_space = cli("compare", run, "--no-train", "--out", out)
    assert no_space.exit_code == 1 and "Traceback" not in no_space.output
    assert (
        f"cannot write the report to {out}: No space left on device. Choose another --out" in no_space.stderr
    )
    assert (out / "summary.md").read_text() == before  # the last good report stays


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_report_folder_is_one_message(cli, tmp_path: Path) -> None:
    run = fake_run(tmp_path / "runs", "plain20", 0, 6, 9)
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    result = cli("compare", run, "--no-train", "--out", out)
    assert result.exit_code == 1 and "Permission denied" in result.stderr and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------
# Figure 6 and the files


def test_figure6_layout(tmp_path: Path) -> None:
    report = summarise(
        records(
            tmp_path,
            {"plain20": [(6, 9), (7, 10)], "plain56": [(9, 13), (10, 14)], "resnet56": [(4, 7), (5, 8)]},
        )
    )
    fig = figure6(report)
    plain, residual = fig.axes
    assert plain.get_title() == "plain nets" and residual.get_title() == "ResNets"
    assert plain.get_ylabel() == "error (%)" and plain.get_xlabel() == "iter."
    assert [(line.get_linestyle(), line.get_label()) for line in plain.lines] == [
        ("--", "plain-20 train"),
        ("-", "plain-20 test"),
        ("--", "plain-56 train"),
        ("-", "plain-56 test"),
        (":", "chance (90%)"),  # 100 - 100/10 classes: what a net that has learned nothing scores
        ("-.", "lr ×0.1"),  # the lr drop at the milestone, iteration 200 of 400
    ]
    drop = plain.lines[-1]
    assert list(drop.get_xdata()) == [200, 200]
    test_line, train_line = plain.lines[1], plain.lines[0]
    assert test_line.get_marker() == "o" and list(test_line.get_xdata()) == [
        100,
        200,
        300,
        400,
    ]  # evaluations
    assert train_line.get_marker() in ("", "None", None)
    assert all(line.get_linewidth() > 2 for line in plain.lines if line.get_linestyle() == "-")
    assert len(residual.lines) == 4  # resnet56 train and test, chance, the lr drop
    assert (
        len([c for c in plain.collections if isinstance(c, PolyCollection)]) == 4
    )  # ±std bands, 2 per model
    colours = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.lines}
    assert colours["plain-56 test"] == colours["ResNet-56 test"] != colours["plain-20 test"]  # colour = depth


def test_no_bands_for_single_seeds(tmp_path: Path) -> None:
    fig = figure6(summarise(records(tmp_path, {"plain20": [(6, 9)]})))
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]


def test_report_files(tmp_path: Path) -> None:
    report = summarise(
        records(tmp_path / "runs", {"plain20": [(6, 9), (8, 11)], "resnet20": [(4, 8), (4, 9)]})
    )
    files = write_report(report, tmp_path / "out")
    assert files.figure_png.stat().st_size > 10_000 and "<svg" in files.figure_svg.read_text()[:500]
    rows = list(csv.DictReader(files.summary_csv.open()))
    assert [r["model"] for r in rows] == ["plain20", "resnet20"]
    assert (float(rows[0]["train_error_mean"]), float(rows[0]["train_error_std"])) == (
        7.0,
        round(math.sqrt(2), 3),
    )
    assert rows[1]["paper_test_error"] == "8.75" and rows[1]["seeds"] == "2"
    md = files.summary_md.read_text()
    assert "| plain20 | 20 | basic | none (plain) |" in md and "7.00 ± 1.41" in md
    assert "Residual fix" in md and "```yaml" in md and "depth: 20" in md
    assert files.tensorboard_command in md
    assert files.tensorboard_command.startswith("tensorboard --logdir_spec plain20")


# ------------------------------------------------------------------------------------------
# Through the real training code: tiny nets, tiny data


TINY = [
    "model.width=4",
    "optim.batch_size=16",
    "schedule.iterations=12",
    "schedule.milestones=[8]",
    "run.log_every=4",
    "run.eval_every=6",
]


def sets(root: Path, *extra: str) -> list[str]:
    return [a for s in [*TINY, f"data.root={root}", *extra] for a in ("--set", s)]


@pytest.mark.slow
def test_compare_trains_then_reuses_in_parallel(cli, learnable_root: Path, tmp_path: Path) -> None:
    args = [
        "compare",
        "plain20",
        "resnet20",
        "--seeds",
        "2",
        "--jobs",
        "2",
        "--runs-dir",
        tmp_path / "runs",
        "--out",
        tmp_path / "report",
        *sets(learnable_root),
    ]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert "4 runs: 0 reused, 0 to resume, 4 to train (2 at a time)" in first.stdout
    assert first.stderr.count("do not match the official checksums") == 1  # four workers, one note
    assert (tmp_path / "report" / "figure6.png").is_file() and "residual fix" in first.stdout.lower()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")}
    second = cli(*args)
    assert second.exit_code == 0 and "4 runs: 4 reused, 0 to resume, 0 to train" in second.stdout
    assert stamps == {
        p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")
    }  # nothing retrained


@pytest.mark.slow
def test_compare_resumes_an_interrupted_run(cli, learnable_root: Path, tmp_path: Path) -> None:
    from test_train import InterruptAt

    cfg = config.load("plain20", [s for s in sets(learnable_root) if s != "--set"] + ["run.seed=0"])
    run = run_dir_for(cfg, tmp_path / "runs")  # runs/plain20/<the tiny overrides>/seed0
    with pytest.raises(Interrupted):
        train(cfg, run, InterruptAt(5))
    result = cli(
        "compare", "plain20", "--runs-dir", tmp_path / "runs", "--out", tmp_path / "r", *sets(learnable_root)
    )
    assert result.exit_code == 0, result.output
    assert "1 to resume" in result.stdout and "resuming at 5" in result.stdout
    env = json.loads((run / "env.json").read_text())
    assert len(env["starts"]) == 2 and read_summary(run).iterations == 12


@pytest.mark.slow
def test_one_failed_run_is_reported_and_the_others_finish(cli, learnable_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: " + str(config.configs_dir() / "plain20.yaml") + "\noptim: {lr: 1.0e+12}\n")
    result = cli(
        "compare",
        "plain20",
        bad,
        "--runs-dir",
        tmp_path / "runs",
        "--out",
        tmp_path / "r",
        *sets(learnable_root),
    )
    assert result.exit_code == 1
    assert "run failed" in result.stderr and "diverged" in result.stderr and "runs/bad/" in result.stderr
    assert len(list((tmp_path / "runs" / "plain20").rglob("summary.json"))) == 1
    assert "Traceback" not in result.output


def test_cli_errors(cli, tmp_path: Path) -> None:
    unknown = cli("compare", "plain21", "--runs-dir", tmp_path)
    assert unknown.exit_code == 2 and "did you mean" in unknown.stderr and "plain20" in unknown.stderr
    missing = cli("compare", "plain20", "--no-train", "--runs-dir", tmp_path)
    assert missing.exit_code == 2 and "not finished" in missing.stderr and "Traceback" not in missing.output
    (tmp_path / "plain20" / "seed0").mkdir(parents=True)
    (tmp_path / "plain20" / "seed0" / "config.yaml").write_text(config.load("plain20").to_yaml())
    no_metrics = cli("compare", tmp_path / "plain20" / "seed0", "--no-train")
    assert no_metrics.exit_code == 1 and "stopped before their first checkpoint" in no_metrics.stderr


@pytest.mark.parametrize(
    "extra,preset,refused",
    [
        (["optim.lr=0.05"], None, "optim.lr"),
        (["schedule.iterations=2000", "schedule.milestones=[1000,1500]"], None, "schedule.iterations"),
        ([], "quick", "schedule.iterations"),
        (FAKE_SETS, None, None),  # what the run was trained with: nothing to ignore
        (["run.device=cpu"], None, None),  # may differ on resume
    ],
)
def test_set_on_a_run_directory_is_refused_where_it_would_be_ignored(
    tmp_path: Path, extra: list[str], preset: str | None, refused: str | None
) -> None:
    """Before: `compare runs/plain20/seed0 --set optim.lr=0.05` reported the lr-0.1 run without a word."""
    run = fake_run(tmp_path, "plain20", 0, 6, 9)
    if refused is None:
        (p,) = plan([str(run)], [0], extra, preset, tmp_path)
        assert p.state == "finished" and p.cfg.optim.lr == 0.1
    else:
        with pytest.raises(CompareError, match=rf"compared as it was trained.*{refused}"):
            plan([str(run)], [0], extra, preset, tmp_path)


def test_figure6_tells_apart_two_models_of_one_net(tmp_path: Path) -> None:
    """A run started from another (model.init_from) and the run from scratch are both plain-56:
    each gets its name in the legend and a colour of its own."""
    runs = [
        load_run(fake_run(tmp_path, "plain56", 0, 71, 68)),
        load_run(fake_run(tmp_path, "plain56", 0, 35, 33, overrides=("run.name=plain56-from20",))),
        load_run(fake_run(tmp_path, "resnet56", 0, 44, 43)),
    ]
    fig = figure6(summarise(runs))
    colours = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.lines}
    assert {"plain-56 (plain56) test", "plain-56 (plain56-from20) test", "ResNet-56 test"} <= set(colours)
    plain = [colours["plain-56 (plain56) test"], colours["plain-56 (plain56-from20) test"]]
    assert plain[0] != plain[1] and colours["ResNet-56 test"] not in plain

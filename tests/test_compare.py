"""compare.py, report.py and sweep.py: statistics, alignment, verdicts, the figure, the files, and
compare's reuse / resume / parallel training through the real training code."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from resbench import config
from resbench.compare import (
    CompareError,
    Row,
    Stat,
    aligned,
    load_run,
    plan,
    summarise,
    verdict,
)
from resbench.config import parse_seeds
from resbench.report import figure6, write_report
from resbench.tracking import read_summary
from resbench.train import Interrupted, train

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
        [f"run.seed={seed}", f"schedule.iterations={iterations}", "schedule.milestones=[200]", *overrides],
    )
    run_dir = runs_dir / cfg.run.name / f"seed{seed}"
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


def row(name: str, depth: int, residual: bool, train: list[float]) -> Row:
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
        1000,
    )


# ------------------------------------------------------------------------------------------
# Statistics and alignment


def test_stat_mean_and_sample_std_by_hand() -> None:
    s = Stat.of([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3) and s.std == pytest.approx(math.sqrt(7 / 3)) and s.n == 3
    assert Stat.of([5.0]) == Stat(5.0, 0.0, 1)
    assert str(Stat.of([1.0, 3.0])) == "2.00 ± 1.41" and str(Stat.of([2.0])) == "2.00"


def test_seeds_parse_as_count_or_list() -> None:
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7] and parse_seeds("5,") == [5]
    with pytest.raises(config.ConfigError):
        parse_seeds("x")
    with pytest.raises(config.ConfigError):
        parse_seeds("0")


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
        match=r"plain20/seed0 and .*plain56/seed0 were not trained alike "
        r"\(data\.dataset: cifar10 vs cifar100",
    ):
        summarise([a, b])


def test_a_run_without_metrics_is_named(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "plain20", 0, 6, 9)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(CompareError, match=r"no metrics\.jsonl"):
        load_run(run)
    with pytest.raises(CompareError, match="not a run directory"):
        load_run(tmp_path)


def test_plan_reuses_finished_runs_and_refuses_one_with_another_config(tmp_path: Path) -> None:
    fake_run(tmp_path, "plain20", 0, 6, 9)
    sets = ["schedule.iterations=400", "schedule.milestones=[200]"]
    (p,) = plan(["plain20"], [0], sets, None, tmp_path)
    assert p.state == "finished" and p.run_dir == tmp_path / "plain20" / "seed0"
    assert [q.state for q in plan(["plain20"], [0, 1], sets, None, tmp_path)] == ["finished", "empty"]
    with pytest.raises(config.ConfigError, match=r"differs in optim\.lr"):
        plan(["plain20"], [0], [*sets, "optim.lr=0.05"], None, tmp_path)
    assert plan([str(tmp_path / "plain20" / "seed0")], [5], [], None, tmp_path)[0].cfg.run.seed == 0


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
    ]
    assert all(line.get_linewidth() > 2 for line in plain.lines if line.get_linestyle() == "-")
    assert len(residual.lines) == 2
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
    assert files.tensorboard_command.startswith("tensorboard --logdir_spec plain20-seed0:")


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
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "runs" / "plain20" / "seed0", InterruptAt(5))
    result = cli(
        "compare", "plain20", "--runs-dir", tmp_path / "runs", "--out", tmp_path / "r", *sets(learnable_root)
    )
    assert result.exit_code == 0, result.output
    assert "1 to resume" in result.stdout and "resuming at 5" in result.stdout
    env = json.loads((tmp_path / "runs" / "plain20" / "seed0" / "env.json").read_text())
    assert len(env["starts"]) == 2 and read_summary(tmp_path / "runs" / "plain20" / "seed0").iterations == 12


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
    assert "run failed" in result.stderr and "diverged" in result.stderr and "bad/seed0" in result.stderr
    assert (tmp_path / "runs" / "plain20" / "seed0" / "summary.json").is_file()
    assert "Traceback" not in result.output


def test_cli_errors(cli, tmp_path: Path) -> None:
    unknown = cli("compare", "plain21", "--runs-dir", tmp_path)
    assert unknown.exit_code == 2 and "did you mean" in unknown.stderr and "plain20" in unknown.stderr
    missing = cli("compare", "plain20", "--no-train", "--runs-dir", tmp_path)
    assert missing.exit_code == 2 and "not finished" in missing.stderr and "Traceback" not in missing.output
    (tmp_path / "plain20" / "seed0").mkdir(parents=True)
    (tmp_path / "plain20" / "seed0" / "config.yaml").write_text(config.load("plain20").to_yaml())
    no_metrics = cli("compare", tmp_path / "plain20" / "seed0", "--no-train")
    assert no_metrics.exit_code == 2 and "seed0 (no metrics or checkpoint yet)" in no_metrics.stderr

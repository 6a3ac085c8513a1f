"""Run names from overrides, `--sweep` grids, sweeps in the compare report, and `compare --dry-run`.

Naming is config.load's (`run.overrides`) and rundir.run_dir_for's; grids, grouping and the plan are
compare.py's; the dry run is experiment.plan_compare rendered by console.print_plan."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from test_compare import FAKE_DIR, FAKE_SETS, TINY, fake_run, fake_sets, sets

from resbench import config, experiment
from resbench.compare import Grid, load_run, plan, summarise
from resbench.config import render_value
from resbench.errors import CompareError, ConfigError, Interrupted
from resbench.hardware import resolve_precision
from resbench.report import figure6, write_report
from resbench.rundir import MAX_OVERRIDES_NAME, rerun_command, run_dir_for

RUNS = Path("runs")


def where(name: str, *overrides: str, preset: str | None = None) -> Path:
    return run_dir_for(config.load(name, list(overrides), preset), RUNS)


# ------------------------------------------------------------------------------------------
# Run names


def test_two_overrides_give_two_directories_and_one_finds_its_own_again() -> None:
    lr = where("resnet20", "optim.lr=0.05", "optim.weight_decay=0")
    assert lr == Path("runs/resnet20/optim.lr=0.05,optim.weight_decay=0/seed0")  # keys sorted
    assert where("resnet20", "optim.weight_decay=0.0", "optim.lr=5e-2") == lr  # any spelling, any order
    assert where("resnet20", "optim.lr=0.02", "optim.weight_decay=0") != lr
    assert where("resnet20", "optim.lr=0.05", "optim.weight_decay=0", "run.seed=3") == lr.parent / "seed3"


def test_runs_without_overrides_keep_their_directory() -> None:
    assert where("resnet20") == Path("runs/resnet20/seed0")
    assert where("resnet20", "optim.lr=0.1", "optim.weight_decay=1e-4") == Path(
        "runs/resnet20/seed0"
    )  # as the file
    assert where("resnet20", "schedule.iterations=2000", preset="quick") == Path("runs/resnet20-quick/seed0")
    assert where("resnet20", "optim.lr=0.05", preset="quick") == Path(
        "runs/resnet20-quick/optim.lr=0.05/seed0"
    )


def test_run_and_analysis_keys_never_name_a_directory() -> None:
    untouched = [
        "run.device=cpu",
        "run.compile=true",
        "run.log_every=7",
        "run.eval_every=50",
        "analysis.every=9",
    ]
    assert where("resnet20", *untouched) == Path("runs/resnet20/seed0")


def test_the_run_keys_that_change_the_numbers_name_a_directory() -> None:
    """fp32 and bf16 (or synced BN) train other numbers: two resolved configs, two directories."""
    assert where("resnet20", "run.precision=fp32") == Path("runs/resnet20/run.precision=fp32/seed0")
    assert where("resnet20", "run.sync_bn=true", "run.cuda_graph=true") == Path(
        "runs/resnet20/run.sync_bn=true/seed0"
    )
    assert Grid.parse(["run.precision=fp32,bf16"], []).combinations() == [
        ("run.precision=fp32",),
        ("run.precision=bf16",),
    ]


def test_a_value_that_follows_from_another_is_not_named() -> None:
    """--set data.dataset=cifar100 sets model.num_classes too: saying so again is the same config."""
    one = config.load("resnet20", ["data.dataset=cifar100"])
    two = config.load("resnet20", ["data.dataset=cifar100", "model.num_classes=100"])
    assert one == two and one.run.overrides == ("data.dataset=cifar100",)
    warm = config.load("resnet20", ["schedule.warmup={lr: 0.02}"])  # the others are the defaults
    assert warm.run.overrides == ("schedule.warmup.lr=0.02",)
    assert config.load("resnet20", ["schedule.warmup.lr=0.02"]) == warm


def test_run_name_replaces_the_whole_name() -> None:
    assert where("resnet20", "run.name=mine", "optim.lr=0.05") == Path("runs/mine/seed0")


def test_the_resolved_config_finds_its_directory_again(tmp_path: Path) -> None:
    """`--config RUN_DIR` and `--resume` reload config.yaml: it records the overrides that name it."""
    cfg = config.load("resnet20", ["optim.lr=0.05", "schedule.milestones=[16000,24000]"])
    run_dir = run_dir_for(cfg, tmp_path)
    assert run_dir.parent.name == "optim.lr=0.05,schedule.milestones=[16000,24000]"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    again = config.load(run_dir / "config.yaml")
    assert again == cfg and run_dir_for(again, tmp_path) == run_dir
    more = config.load(run_dir / "config.yaml", ["optim.weight_decay=0"])  # on top of what it records
    assert (
        more.run.overrides
        == config.load(
            "resnet20", ["optim.lr=0.05", "schedule.milestones=[16000,24000]", "optim.weight_decay=0"]
        ).run.overrides
    )
    assert rerun_command(run_dir, "--resume") == (
        f"resbench train --config '{run_dir / 'config.yaml'}' --runs-dir {tmp_path} --resume"  # [] quoted
    )
    with pytest.raises(ConfigError, match=r"--set run\.overrides: resbench records it"):
        config.load("resnet20", ["run.overrides=[a=1]"])


def test_strings_are_escaped_and_long_names_are_hashed() -> None:
    assert (
        render_value("/mnt/my data,v2=x") == "%2Fmnt%2Fmy%20data%2Cv2%3Dx"
    )  # no `/`, no `,` or `=` to split on
    assert render_value([1000, 1500]) == "[1000,1500]" and render_value(1e-5) == "1e-05"
    assert render_value(0.0) == "0" and render_value(None) == "null" and render_value(True) == "true"
    # where the images are is not which ones: like run.device, data.root names no directory
    assert where("resnet20", "data.root=/mnt/cifar", "data.download=true") == Path("runs/resnet20/seed0")
    many = [
        f"schedule.milestones=[{','.join(str(1000 + i) for i in range(30))}]",
        "optim.lr=0.05",
        "optim.momentum=0.8",
    ]
    cfg = config.load("resnet20", many)
    name = run_dir_for(cfg, RUNS).parent.name
    assert len(name) <= MAX_OVERRIDES_NAME and "/" not in name
    assert (
        name.startswith("optim.lr=0.05,optim.momentum=0.8-and-1-more-") and len(name.rsplit("-", 1)[1]) == 10
    )
    assert cfg.run.overrides[-1].startswith("schedule.milestones=[1000,1001,")  # the full list is recorded
    other = config.load("resnet20", [many[0].replace("1029", "1030"), *many[1:]])
    assert run_dir_for(other, RUNS) != run_dir_for(cfg, RUNS)  # the hash tells them apart


# ------------------------------------------------------------------------------------------
# --sweep


def test_sweep_values_split_at_top_level_commas() -> None:
    grid = Grid.parse(["optim.weight_decay=0,1e-4,1e-3", "schedule.milestones=[1000,1500],[500,800]"])
    assert grid.axes == (
        ("optim.weight_decay", ("0", "1e-4", "1e-3")),
        ("schedule.milestones", ("[1000,1500]", "[500,800]")),
    )
    combos = grid.combinations()
    assert len(combos) == 6 and combos[0] == ("optim.weight_decay=0", "schedule.milestones=[1000,1500]")
    assert combos[1] == (
        "optim.weight_decay=0",
        "schedule.milestones=[500,800]",
    )  # the last key varies fastest
    assert Grid.parse(["model.block='a,b',c"]).axes == (("model.block", ("'a,b'", "c")),)
    assert Grid().combinations() == [()]


def test_every_problem_with_the_sweep_options_is_listed() -> None:
    with pytest.raises(ConfigError) as err:
        Grid.parse(
            [
                "run.device=cpu,cuda",
                "optim.lr=0.1,0.05",
                "optim.lr=0.2",
                "schedule.milestones=[1000,1500",
                "optim.momentum=0.9,,0.8",
                "model.width=8,16,8",
                "novalues",
                "optim.nesterov=true,false",
            ],
            fixed=["optim.nesterov=true"],
        )
    lines = str(err.value).splitlines()
    assert len(lines) == 7
    assert "run.device does not name a run directory" in lines[0] and "--set run.device=VALUE" in lines[0]
    assert "optim.lr is swept twice" in lines[1] and "not closed" in lines[2] and "an empty value" in lines[3]
    assert "repeats 8" in lines[4] and "expected KEY=V1,V2" in lines[5] and "also given by --set" in lines[6]
    with pytest.raises(ConfigError, match="11 x 10 x 10 combinations is more than 1000"):
        Grid.parse(
            [
                f"optim.lr={','.join(str(i + 1) for i in range(11))}",
                *[f"{k}={','.join(map(str, range(1, 11)))}" for k in ("model.width", "optim.batch_size")],
            ]
        )


def test_a_bad_sweep_value_stops_the_command_before_anything_trains(cli, tmp_path: Path) -> None:
    """One bad value of a sweep: every problem at once, exit 2, no run directory, nothing trained."""
    for command in (
        [
            "compare",
            "plain20",
            "resnet20",
            "--sweep",
            "optim.weight_decay=0,-1",
            "--sweep",
            "optim.lr=0.1,-0.5",
        ],
        ["train", "-c", "resnet20", "--sweep", "optim.weight_decay=0,-1", "--sweep", "optim.lr=0.1,-0.5"],
    ):
        result = cli(*command, "--runs-dir", tmp_path / "runs", *fake_sets())
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        message = result.stderr.replace("\n", " ")
        assert "nothing was trained" in message and "optim.weight_decay: must be 0 or more, got -1" in message
        assert "optim.lr: must be positive, got -0.5" in message
        assert not (tmp_path / "runs").exists()
    # the same value twice in a sweep names one run twice, which --sweep refuses before it plans
    twice = cli(
        "compare", "plain20", "--sweep", "optim.lr=0.05,5e-2", "--runs-dir", tmp_path / "runs", *fake_sets()
    )
    assert twice.exit_code == 2 and "would count twice" in twice.stderr


def test_a_sweep_plans_every_combination_and_seed(tmp_path: Path) -> None:
    grid = Grid.parse(["optim.weight_decay=0,1e-3", "optim.lr=0.1,0.05"])
    planned = plan(["plain20"], [0, 1], FAKE_SETS, None, tmp_path, grid)
    assert len(planned) == 8 and len({p.run_dir for p in planned}) == 8
    assert {p.run_dir.parent.name for p in planned} == {
        f"optim.weight_decay=0,{FAKE_DIR}",
        f"optim.lr=0.05,optim.weight_decay=0,{FAKE_DIR}",
        f"optim.weight_decay=0.001,{FAKE_DIR}",
        f"optim.lr=0.05,optim.weight_decay=0.001,{FAKE_DIR}",
    }
    run = fake_run(tmp_path, "plain20", 0, 6, 9)
    with pytest.raises(ConfigError, match="--sweep cannot apply to it"):
        plan([str(run)], [0], [], None, tmp_path, grid)


# ------------------------------------------------------------------------------------------
# A sweep in the report: rows and curves per model and values, a verdict within each value


SWEEP = {  # weight decay -> model -> train error per seed
    "0": {"plain20": [20.0, 21.0], "plain56": [40.0, 41.0], "resnet56": [15.0, 16.0]},
    "0.001": {"plain20": [30.0, 31.0], "plain56": [30.5, 31.5], "resnet56": [29.0, 30.0]},
}


def sweep_report(runs: Path):
    records = [
        load_run(fake_run(runs, name, seed, err, err + 2, overrides=(f"optim.weight_decay={wd}",)))
        for wd, models in SWEEP.items()
        for name, errors in models.items()
        for seed, err in enumerate(errors)
    ]
    return summarise(records)


def test_rows_group_by_model_and_swept_values(tmp_path: Path) -> None:
    report = sweep_report(tmp_path)
    assert report.swept == ["optim.weight_decay"]  # the schedule every run sets alike is not swept
    assert [(r.name, r.overrides, r.train_error.mean) for r in report.rows] == [
        ("plain20", "optim.weight_decay=0", 20.5),
        ("plain20", "optim.weight_decay=0.001", 30.5),
        ("plain56", "optim.weight_decay=0", 40.5),
        ("plain56", "optim.weight_decay=0.001", 31.0),
        ("resnet56", "optim.weight_decay=0", 15.5),
        ("resnet56", "optim.weight_decay=0.001", 29.5),
    ]
    assert all(r.train_error.n == 2 for r in report.rows) and len(report.curves) == 6


def test_the_verdict_pairs_twins_within_the_same_swept_values(tmp_path: Path) -> None:
    findings = sweep_report(tmp_path).findings
    assert [(f.overrides, f.kind, f.status) for f in findings] == [
        ("optim.weight_decay=0", "degradation", "shown"),  # 40.5 vs 20.5
        ("optim.weight_decay=0", "residual fix", "shown"),
        ("optim.weight_decay=0.001", "degradation", "inconclusive"),  # 31.0 vs 30.5
        ("optim.weight_decay=0.001", "residual fix", "inconclusive"),
    ]
    assert findings[0].text.startswith(
        "[optim.weight_decay=0] Degradation: plain56 trains worse than plain20"
    )
    assert "40.5% vs 20.5%" in findings[0].text  # never plain56 at one value against plain20 at the other


def test_the_report_files_show_the_swept_values(tmp_path: Path) -> None:
    files = write_report(sweep_report(tmp_path / "runs"), tmp_path / "out")
    csv_text = files.summary_csv.read_text().splitlines()
    assert csv_text[0].startswith("model,overrides,depth") and csv_text[1].startswith(
        "plain20,optim.weight_decay=0,20"
    )
    md = files.summary_md.read_text()
    assert "| model | overrides | depth |" in md and "| plain20 | optim.weight_decay=0.001 | 20 |" in md
    assert (
        "### plain56, optim.weight_decay=0.001 (seeds 0, 1)" in md
        and "[optim.weight_decay=0.001] Degradation" in md
    )


def test_figure6_draws_a_panel_row_per_swept_value(tmp_path: Path) -> None:
    fig = figure6(sweep_report(tmp_path))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "plain nets, optim.weight_decay=0",
        "ResNets, optim.weight_decay=0",
        "plain nets, optim.weight_decay=0.001",
        "ResNets, optim.weight_decay=0.001",
    ]
    labels = [line.get_label() for line in fig.axes[2].lines]
    assert labels == [
        "plain-20 train",
        "plain-20 test",
        "plain-56 train",
        "plain-56 test",
        "chance (90%)",
        "lr ×0.1",
    ]
    colours = {line.get_label(): line.get_color() for line in fig.axes[0].lines}
    assert colours["plain-56 test"] == fig.axes[3].lines[1].get_color()  # depth keeps its colour across rows


def test_a_key_that_differs_between_models_but_is_not_swept_is_still_refused(tmp_path: Path) -> None:
    a = load_run(fake_run(tmp_path, "plain20", 0, 6, 9, overrides=("optim.lr=0.05",)))
    b = load_run(fake_run(tmp_path, "plain56", 0, 9, 13))
    with pytest.raises(CompareError, match=r"were not trained alike \(optim\.lr: 0\.05 vs 0\.1\)"):
        summarise([a, b])


# ------------------------------------------------------------------------------------------
# compare --dry-run


def finished_here(run_dir: Path, images_per_sec: float) -> None:
    """Make a fake finished run one that trained on this host at `images_per_sec`."""
    summary = json.loads((run_dir / "summary.json").read_text())
    precision = resolve_precision("auto", torch.device("cpu"))  # as the planned runs resolve here
    summary |= {"images_per_sec": images_per_sec, "precision": precision}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "env.json").write_text(
        json.dumps({"host": socket.gethostname(), "device": "cpu", "starts": []})
    )


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_dry_run_plans_reuse_and_training_with_estimates_and_writes_nothing(cli, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    finished_here(
        fake_run(runs, "plain20", 0, 6, 9, overrides=("optim.weight_decay=0",)), images_per_sec=1600
    )
    grid = Grid.parse(["optim.weight_decay=0,1e-3"])
    dry = experiment.plan_compare(
        ["plain20", "plain56"], [0], [*FAKE_SETS, "run.device=cpu"], None, runs, grid
    )
    assert dry.valid and dry.device == "cpu"
    steps = [
        (r.run.run_dir.relative_to(runs), r.run.action, r.run.iterations_left, r.seconds) for r in dry.runs
    ]
    assert steps == [
        (Path("plain20") / f"optim.weight_decay=0,{FAKE_DIR}" / "seed0", "reuse", 0, 0.0),
        (Path("plain20") / f"optim.weight_decay=0.001,{FAKE_DIR}" / "seed0", "train", 400, 400 * 128 / 1600),
        (Path("plain56") / f"optim.weight_decay=0,{FAKE_DIR}" / "seed0", "train", 400, None),  # none measured
        (Path("plain56") / f"optim.weight_decay=0.001,{FAKE_DIR}" / "seed0", "train", 400, None),
    ]
    assert dry.seconds is None  # unknown as a whole where one run is unknown
    before = tree(tmp_path)
    result = cli(
        "compare", "plain20", "plain56", "--sweep", "optim.weight_decay=0,1e-3", "--dry-run",
        "--device", "cpu", "--runs-dir", runs, "--out", tmp_path / "report", *fake_sets(),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert tree(tmp_path) == before  # no run directory, no report, no lock
    out = result.stdout
    assert "Plan: 4 runs (1 reuse, 3 train); --dry-run trains nothing" in out
    assert out.count("unknown") >= 3 and "32s" in out  # 400 iterations x 128 images at 1,600/s
    assert "total: 1,200 iterations left on cpu; time, one run at a time: unknown" in out


def test_dry_run_refuses_what_compare_would_refuse_and_exits_2(cli, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    stopped = runs / "plain20" / FAKE_DIR / "seed1"
    stopped.mkdir(parents=True)
    (stopped / "metrics.jsonl").write_text('{"iteration": 10, "error/train": 80.0}\n')
    fake_run(runs, "plain20", 0, 6, 9, overrides=("run.name=mine",))
    before = tree(tmp_path)
    dry = cli("compare", "plain20", "--seeds", "2", "--dry-run", "--runs-dir", runs, *fake_sets())
    assert dry.exit_code == 2 and "Traceback" not in dry.output
    assert f"refuse {stopped}: {stopped} stopped before its first checkpoint" in dry.stdout
    assert "(why: below)" in dry.stdout and "resbench train --config CONFIG" in dry.stdout
    assert "1 run refused: compare would stop before it trains" in dry.stderr
    other = cli(
        "compare", "plain20", "--dry-run", "--runs-dir", runs, *fake_sets("run.name=mine", "optim.lr=0.05")
    )
    assert other.exit_code == 2 and "differs in optim.lr" in other.stdout.replace("\n", "")
    real = cli("compare", "plain20", "--runs-dir", runs, *fake_sets("run.name=mine", "optim.lr=0.05"))
    assert real.exit_code == 2 and "differs in optim.lr" in real.stderr  # as the plan said
    no_train = cli(
        "compare", "plain20", "--seeds", "3", "--no-train", "--dry-run", "--runs-dir", runs, *fake_sets()
    )
    assert no_train.exit_code == 2 and "--no-train trains nothing" in no_train.stdout.replace("\n", "")
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------------------------
# Through the real training code


TINY_NET = ["model.depth=8"]  # plain20 and resnet20 made 8 deep: a few seconds for all eight runs


@pytest.mark.slow
def test_a_2x2_sweep_with_2_seeds_trains_8_runs_and_a_rerun_trains_none(
    cli, learnable_root: Path, tmp_path: Path
) -> None:
    from test_train import InterruptAt

    from resbench.train import train

    args = [
        "compare", "plain20", "--seeds", "2",
        "--sweep", "optim.weight_decay=0,1e-3", "--sweep", "optim.lr=0.1,0.05",
        "--runs-dir", tmp_path / "runs", "--out", tmp_path / "report", *sets(learnable_root, *TINY_NET),
    ]  # fmt: skip
    # one run was stopped at iteration 5: the plan says it resumes there, and compare does
    cfg = config.load(
        "plain20", [*TINY, f"data.root={learnable_root}", *TINY_NET, "optim.weight_decay=0", "run.seed=1"]
    )
    with pytest.raises(Interrupted):
        train(cfg, run_dir_for(cfg, tmp_path / "runs"), InterruptAt(5))
    dry = cli(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Plan: 8 runs (1 resume, 7 train)" in dry.stdout and "resume at 5" in dry.stdout
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert "8 runs: 0 reused, 1 to resume, 7 to train" in first.stdout and "resuming at 5" in first.stdout
    assert len(list((tmp_path / "runs").rglob("summary.json"))) == 8
    report = (tmp_path / "report" / "summary.csv").read_text().splitlines()
    assert report[0].startswith("model,overrides,") and len(report) == 5  # 4 groups of 2 seeds
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")}
    assert len(stamps) == 8
    again = cli(*args, "--dry-run")
    assert again.exit_code == 0 and "Plan: 8 runs (8 reuse)" in again.stdout
    second = cli(*args)
    assert second.exit_code == 0 and "8 runs: 8 reused, 0 to resume, 0 to train" in second.stdout
    assert stamps == {
        p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")
    }  # nothing retrained
    # `train --sweep` finds the same directories: every run is finished, so it refuses rather than retrain
    train_again = cli(
        "train",
        "-c",
        "plain20",
        "--seed",
        "0",
        "--sweep",
        "optim.lr=0.1,0.05",
        "--runs-dir",
        tmp_path / "runs",
        *sets(learnable_root, *TINY_NET, "optim.weight_decay=0"),
    )
    assert train_again.exit_code == 1 and "already holds a finished run" in train_again.stderr


def test_overrides_written_into_a_config_cannot_lead_out_of_the_runs_directory(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(
        "_base_: " + str(config.configs_dir() / "resnet20.yaml") + "\nrun: {overrides: ['a=../../x']}\n"
    )
    with pytest.raises(ConfigError, match=r"run\.overrides: must be key=value entries without '/'"):
        config.load(path)

"""experiment.py: the compare job as a library call, which returns its data and never prints.
Its training paths (reuse, resume, parallel, failures) run through the CLI in test_compare.py."""

from pathlib import Path

import pytest
from test_compare import fake_run

from resbench import experiment
from resbench.compare import Grid, Planned, plan
from resbench.errors import ConfigError


class Recorder(experiment.SweepWatcher):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def planned(self, runs: list[Planned], where: str) -> None:
        self.calls.append(("planned", ([p.state for p in runs], where)))

    def close(self) -> None:
        self.calls.append(("close", None))


FAKE = ["schedule.iterations=400", "schedule.milestones=[200]"]  # as fake_run writes them


def test_compare_returns_the_report_and_prints_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    fake_run(tmp_path, "plain20", 0, 20.0, 22.0)
    fake_run(tmp_path, "plain56", 0, 40.0, 41.0)
    watch = Recorder()
    result = experiment.compare(
        ["plain20", "plain56"], [0], FAKE, None, tmp_path, tmp_path / "r", train_missing=False, watch=watch
    )
    assert capfd.readouterr() == ("", "")
    assert watch.calls == [("planned", (["finished", "finished"], "1 at a time"))]  # nothing to train
    assert [r.name for r in result.report.rows] == ["plain20", "plain56"]
    assert [(f.kind, f.status) for f in result.report.findings] == [("degradation", "shown")]
    assert result.files.summary_md.is_file() and result.analysis is None and result.failed == []


def test_compare_without_training_refuses_missing_runs_before_reporting_a_plan(tmp_path: Path) -> None:
    watch = Recorder()
    with pytest.raises(ConfigError, match=r"--no-train, but these runs are not finished: .*\(not trained\)"):
        experiment.compare(["plain20"], [0], FAKE, None, tmp_path, train_missing=False, watch=watch)
    assert watch.calls == []


@pytest.mark.parametrize(
    "sweep,where",
    [(experiment.Sweep(jobs=3), "3 at a time"), (experiment.Sweep("ray", address="auto"), "on Ray at auto")],
)
def test_a_sweep_says_where_its_runs_train(sweep: experiment.Sweep, where: str) -> None:
    assert sweep.where == where


def test_a_sweep_report_goes_below_the_plain_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default --out of a sweep names its values, so it never overwrites the compare without one."""
    monkeypatch.chdir(tmp_path)
    for wd in ("0", "0.001"):
        fake_run(tmp_path / "runs", "plain20", 0, 20.0, 22.0, overrides=(f"optim.weight_decay={wd}",))
        fake_run(tmp_path / "runs", "plain56", 0, 40.0, 41.0, overrides=(f"optim.weight_decay={wd}",))
    grid = Grid.parse(["optim.weight_decay=0,1e-3"])
    result = experiment.compare(
        ["plain20", "plain56"], [0], FAKE, None, tmp_path / "runs", train_missing=False, grid=grid
    )
    expected = "optim.weight_decay={0,0.001},schedule.iterations=400,schedule.milestones=[200]"
    assert result.files.out_dir == Path("reports/plain20_plain56") / expected
    assert [(r.name, r.overrides) for r in result.report.rows] == [
        ("plain20", "optim.weight_decay=0"),
        ("plain20", "optim.weight_decay=0.001"),
        ("plain56", "optim.weight_decay=0"),
        ("plain56", "optim.weight_decay=0.001"),
    ]


def test_train_resolves_every_combination_before_the_first_run_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[Path] = []
    monkeypatch.setattr(experiment, "train_run", lambda cfg, run_dir, *a, **k: trained.append(run_dir))
    grid = Grid.parse(["optim.lr=0.1,0.05", "optim.weight_decay=0,1e-4"])
    runs = list(experiment.train_seeds("resnet20", [0, 1], [], None, tmp_path, grid=grid))
    assert len(runs) == len(set(trained)) == 8
    assert tmp_path / "resnet20" / "seed0" in trained  # lr 0.1 and weight decay 1e-4: the file's own
    assert tmp_path / "resnet20" / "optim.lr=0.05,optim.weight_decay=0" / "seed1" in trained
    trained.clear()
    bad = Grid.parse(["optim.lr=0.1,-1", "optim.weight_decay=0,-1"])
    with pytest.raises(ConfigError, match=r"3 configs of this command are not valid; nothing was") as err:
        list(experiment.train_seeds("resnet20", [0, 1], [], None, tmp_path, grid=bad))
    assert "- resnet20 with optim.lr=-1, optim.weight_decay=-1: " in str(err.value) and trained == []


def test_the_report_folder_names_a_swept_value_the_config_file_holds_too(tmp_path: Path) -> None:
    """weight decay 1e-4 is resnet20's own, so its runs have no override for it: the folder still says it."""
    grid = Grid.parse(["optim.weight_decay=0,1e-4"])
    planned = plan(["plain20", "resnet20"], [0], [], None, tmp_path, grid)
    assert experiment.default_out(planned) == Path("reports/plain20_resnet20/optim.weight_decay={0,0.0001}")
    assert experiment.default_out(plan(["plain20"], [0], [], None, tmp_path)) == Path("reports/plain20")

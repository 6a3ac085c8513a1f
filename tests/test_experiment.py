"""experiment.py: the compare job as a library call, which returns its data and never prints.
Its training paths (reuse, resume, parallel, failures) run through the CLI in test_compare.py."""

from pathlib import Path

import pytest
from test_compare import fake_run

from resbench import experiment
from resbench.compare import Planned
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

"""report.py: the depth figure, Figure 7's axis and colours, and the TensorBoard overlay of a compare;
with them what TensorBoard's HParams tab gets from each run (tracking.py). Runs are fabricated with
test_compare's `fake_run`, with numbers chosen by the test."""

import dataclasses
import math
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.container import ErrorbarContainer
from test_compare import fake_run, records

from resbench import config, tracking
from resbench.analysis.responses import AnalysisReport, ModelResponses
from resbench.compare import Report, Row, Stat, load_run, summarise
from resbench.models import build_model, count_params
from resbench.report import (
    TRAIN_ERROR_LABEL,
    depth_colours,
    depth_figure,
    depth_lines,
    figure6,
    figure7,
    overlay,
    tensorboard_command,
    tensorboard_url,
    write_report,
)

FOUR = {  # two seeds each: plain nets degrade with depth, ResNets do not
    "plain20": [(30, 29), (32, 31)],
    "plain56": [(70, 68), (72, 70)],
    "resnet20": [(25, 24), (27, 26)],
    "resnet56": [(20, 19), (22, 21)],
}

# ------------------------------------------------------------------------------------------
# Error against depth


def errorbars(ax: Axes) -> dict[str, ErrorbarContainer]:
    """The lines of an axis drawn with errorbar, by label (the data line is `.lines[0]`)."""
    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def test_the_depth_figure_plots_each_models_final_errors_with_seed_error_bars(tmp_path: Path) -> None:
    fig = depth_figure(summarise(records(tmp_path, FOUR)))
    assert fig is not None
    train, test = fig.axes
    for ax, expected in (
        (train, {"plain": [31.0, 71.0], "ResNet": [26.0, 21.0]}),
        (test, {"plain": [30.0, 69.0], "ResNet": [25.0, 20.0]}),
    ):
        bars = errorbars(ax)
        assert list(bars) == ["plain", "ResNet"]
        for label, means in expected.items():
            line = bars[label].lines[0]
            assert list(line.get_xdata()) == [20, 56] and list(line.get_ydata()) == pytest.approx(means)
        assert to_rgba(bars["plain"].lines[0].get_color()) != to_rgba(bars["ResNet"].lines[0].get_color())
        assert [t.get_text() for t in ax.get_xticklabels()] == ["20", "56"]
        # ±1 sample std over the two seeds (each pair differs by 2 points: std √2)
        (vertical,) = bars["plain"].lines[2]
        low, high = vertical.get_segments()[0]
        assert (low[0], high[1] - low[1]) == pytest.approx((20, 2 * math.sqrt(2)))
    assert train.get_ylabel() == TRAIN_ERROR_LABEL and "running" in train.get_ylabel()
    assert "test error" in test.get_ylabel()
    assert "±1 std over 2 seeds" in fig.texts[0].get_text()


def test_one_depth_draws_no_depth_figure_and_two_write_it(tmp_path: Path) -> None:
    one = summarise(records(tmp_path / "one", {"plain20": [(30, 29)], "resnet20": [(25, 24)]}))
    assert depth_figure(one) is None
    files = write_report(one, tmp_path / "report1")
    assert files.depth_png is None and not (tmp_path / "report1" / "depth.png").exists()
    assert "depth.png" not in files.summary_md.read_text()
    files = write_report(summarise(records(tmp_path / "four", FOUR)), tmp_path / "report4")
    assert files.depth_png == tmp_path / "report4" / "depth.png" and files.depth_png.stat().st_size > 10_000
    assert files.depth_svg is not None and "<svg" in files.depth_svg.read_text()[:500]
    assert "![Final error against depth](depth.png)" in files.summary_md.read_text()


def row(
    name: str, depth: int, residual: bool, train: float, shortcut: str | None = None, overrides: str = ""
) -> Row:
    s = Stat.of([train])
    return Row(
        name, depth, "basic", residual, shortcut or ("A" if residual else None), 1, (0,), s, s, None, False,
        s, 400, 10, overrides=overrides,
    )  # fmt: skip


def test_rows_that_differ_in_more_than_depth_get_a_line_each_and_a_line_style(tmp_path: Path) -> None:
    """A sweep's values, a shortcut option, or configs that differ in their name alone."""
    sweep = [
        row(f"{net}{d}", d, net == "resnet", err, overrides=f"optim.lr={lr}")
        for net in ("plain", "resnet")
        for d in (20, 56)
        for lr, err in ((0.1, 30.0 + d), (0.05, 40.0 + d))
    ]
    lines = depth_lines(sweep)
    assert set(lines) == {(r, f"optim.lr={lr}") for r in (False, True) for lr in (0.1, 0.05)}
    assert [r.train_error.mean for r in lines[(False, "optim.lr=0.05")]] == [60.0, 96.0]
    report = Report(sweep, [], [], [], records(tmp_path, {"plain20": [(30, 29)]}))
    fig = depth_figure(report)
    assert fig is not None
    style = {label: bars.lines[0].get_linestyle() for label, bars in errorbars(fig.axes[0]).items()}
    assert style["plain (optim.lr=0.1)"] == style["ResNet (optim.lr=0.1)"] != style["plain (optim.lr=0.05)"]

    options = depth_lines([row("resnet20", 20, True, 9), row("resnet20_B", 20, True, 8, shortcut="B")])
    assert set(options) == {(True, "shortcut A"), (True, "shortcut B")}
    renamed = depth_lines(
        [row("plain20", 20, False, 9), row("plain20-v2", 20, False, 8), row("plain56", 56, False, 7)]
    )
    assert {k: [r.name for r in v] for k, v in renamed.items()} == {
        (False, ""): ["plain20", "plain56"],
        (False, "plain20-v2"): ["plain20-v2"],
    }


# ------------------------------------------------------------------------------------------
# Figure 7


def test_figure7_has_a_log_axis_and_figure6s_colour_for_each_depth(tmp_path: Path) -> None:
    """Before: plain-56's early stds near 9 set a linear axis on which every other net was one line,
    and each model had a colour of its own, unlike Figure 6."""
    models = [
        ModelResponses("plain20", 20, False, 1, [1.0, 0.9], None),
        ModelResponses("plain56", 56, False, 1, [9.0, 1.0], None),
        ModelResponses("resnet20", 20, True, 1, [0.8, 0.7], 0.5),
        ModelResponses("resnet56", 56, True, 1, [0.6, 0.5], 0.4),
    ]
    top, bottom = figure7(AnalysisReport(models, [])).axes
    assert top.get_yscale() == bottom.get_yscale() == "log"
    colour = {line.get_label(): to_rgba(line.get_color()) for line in top.lines}
    assert colour["plain-20"] == colour["ResNet-20"] == to_rgba(depth_colours([20, 56])[20])
    assert colour["plain-56"] == colour["ResNet-56"] != colour["plain-20"]
    six = figure6(summarise(records(tmp_path, FOUR)))
    six_colour = {line.get_label(): to_rgba(line.get_color()) for ax in six.axes for line in ax.lines}
    assert (
        six_colour["plain-20 test"] == colour["plain-20"]
        and six_colour["ResNet-56 test"] == colour["ResNet-56"]
    )


# ------------------------------------------------------------------------------------------
# TensorBoard: the overlay of a compare's runs


def test_the_overlay_reads_absolute_model_folders_and_names_runs_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `--logdir_spec plain20-seed0:runs/plain20/seed0,...` worked only where compare ran,
    and TensorBoard named each run `plain20-seed0/.`."""
    monkeypatch.chdir(tmp_path)
    report = summarise(records(Path("runs"), {"plain20": [(30, 29), (31, 30)], "resnet20": [(25, 24)]}))
    runs = (tmp_path / "runs").resolve()
    command = tensorboard_command(report)
    assert command == f"tensorboard --logdir_spec plain20:{runs / 'plain20'},resnet20:{runs / 'resnet20'}"
    names = overlay(report).runs
    assert [n.split("/")[0] for n in names] == ["plain20", "plain20", "resnet20"]
    assert all(re.fullmatch(r"[^/]+(/[^/]+)*/seed\d", n) for n in names)  # no "/." and no empty part
    # the colour group (the name up to its last "/") joins the seeds of one model, and only those
    groups = [re.match("(.*)/", n).group(1) for n in names]
    assert groups[0] == groups[1] != groups[2]
    assert tensorboard_url(report) == (
        "http://localhost:6006/?runColorGroup=regex:(.*)/&tagFilter=error#timeseries"
    )

    # a seed of plain20 outside this compare, with its events, would show too: the URL filters it out
    extra = fake_run(Path("runs"), "plain20", 2, 30, 29)
    (extra / "events.out.tfevents.1.host").write_bytes(b"")
    for r in report.records:
        (r.run_dir / "events.out.tfevents.1.host").write_bytes(b"")
    run_filter = parse_qs(urlsplit(tensorboard_url(report)).query)["runFilter"][0]
    assert all(re.fullmatch(run_filter, n) for n in names)
    assert not re.fullmatch(run_filter, names[0].replace("seed0", "seed2"))


def test_a_comma_in_a_path_falls_back_to_the_folder_all_runs_share(tmp_path: Path) -> None:
    """--logdir_spec splits at every comma, so a path with one cannot be given to it."""
    report = summarise(records(tmp_path / "a,b", {"plain20": [(30, 29)], "resnet20": [(25, 24)]}))
    assert tensorboard_command(report) == f"tensorboard --logdir {tmp_path / 'a,b'}"
    assert [n.split("/")[0] for n in overlay(report).runs] == ["plain20", "resnet20"]


# ------------------------------------------------------------------------------------------
# TensorBoard: the HParams each run writes (tracking.py)


def test_hparams_are_a_short_ordered_set_with_words_for_booleans() -> None:
    """Before: all 37 config keys, in alphabetical order (analysis.every first), booleans as 1.0000."""
    cfg = config.load("plain20", ["optim.lr=0.05", "model.zero_init_residual=true", "run.seed=3"])
    values = tracking.hparams_of(cfg, 269_722)
    assert list(values) == [
        "run.name",
        "model.depth",
        "model.block",
        "model.residual",
        "model.shortcut",
        "run.seed",
        "schedule.iterations",
        "optim.lr",
        "optim.weight_decay",
        "model.zero_init_residual",  # swept with --set (run.overrides); optim.lr is in the set already
        "params",
    ]
    assert values["model.residual"] == "false" and values["model.shortcut"] == "none"
    assert values["model.zero_init_residual"] == "true" and values["optim.lr"] == 0.05
    assert values["model.depth"] == 20 and values["run.seed"] == 3 and values["params"] == 269_722


def test_a_run_writes_its_hparams_without_an_experiment_summary(tmp_path: Path) -> None:
    """TensorBoard takes one run's experiment summary at random for every run, with every key marked
    as not differing; from session starts alone it computes which keys differ and shows those first."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = config.load("resnet20", ["optim.lr=0.05"])
    files = tracking.RunFiles(tmp_path)
    state = torch.get_rng_state()
    files.start(cfg, 0, {})
    assert torch.equal(torch.get_rng_state(), state)  # counting parameters draws no init from its RNG
    files.finish(tracking.Summary(**{f.name: 0 for f in dataclasses.fields(tracking.Summary)}))
    files.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert set(hparams) == set(tracking.hparams_of(cfg, 0))
    assert hparams["model.residual"].string_value == "true" and hparams["optim.lr"].number_value == 0.05
    assert hparams["params"].number_value == count_params(build_model(cfg.model)) == 269_722


def test_the_commit_of_an_installed_package_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: env.json and summary.md said "commit None"."""
    checkout = Path(tracking.__file__).resolve().parents[1] / ".git"
    if checkout.exists():  # tests run from a checkout name its commit (not so from an sdist)
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", tracking._git_commit())
    (tmp_path / "tracking.py").write_text("")
    monkeypatch.setattr(tracking, "__file__", str(tmp_path / "tracking.py"))  # outside any git checkout
    assert tracking._git_commit() == "unknown"


def test_summary_md_names_the_overlay_url_and_an_unknown_commit(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "runs", "plain20", 0, 30, 29)
    (run / "env.json").write_text('{"git_commit": null}')  # written before "unknown" was recorded
    files = write_report(summarise([load_run(run)]), tmp_path / "report")
    md = files.summary_md.read_text()
    assert f"then open {files.tensorboard_url} (one colour per model" in md
    assert "commit unknown" in md and "commit None" not in md
    assert "wall time (mean per run)" in md

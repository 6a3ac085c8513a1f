"""analysis/training.py and its figures: a run's probes.jsonl read back per layer and block, checked
against the run's net; gradients.png and blocks.png drawn from it; `resbench analyze` writes them."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_analysis import trained  # noqa: F401  (the module fixture: plain20 and resnet20, probed at 10 and 20)

from resbench.analysis.training import NEAR_IDENTITY, training_probes
from resbench.errors import RunDirError
from resbench.report import blocks_figure, gradients_figure, write_training_figures
from resbench.rundir import read_probes


def test_the_arrays_are_probes_jsonl_layer_by_layer(trained: Path) -> None:  # noqa: F811
    run = trained / "resnet20" / "seed0"
    probes, records = training_probes(run), read_probes(run)
    assert probes is not None and probes.residual and probes.depth == 20
    assert list(probes.iterations) == [10, 20]
    assert probes.grad_norm.shape == (2, 18) and probes.block_ratio is not None
    assert probes.block_ratio.shape == probes.branch_gamma.shape == (2, 9)
    assert probes.grad_norm[1].tolist() == records[1]["analysis/grad_norm"]
    assert probes.block_ratio[0].tolist() == records[0]["analysis/block_ratio"]
    assert probes.layers[0] == "stage1.0.bn1" and probes.blocks[-1] == "stage3.2"
    assert probes.test_error is not None and probes.train_error is not None
    plain = training_probes(trained / "plain20" / "seed0")
    assert plain is not None and plain.block_ratio is None and plain.blocks == ()


def test_the_summary_numbers(trained: Path) -> None:  # noqa: F811
    probes = training_probes(trained / "resnet20" / "seed0")
    assert probes is not None and probes.block_ratio is not None
    last = np.array([0.05, 0.1, 0.3, 0.5, 0.9, 1.2, 0.15, 0.25, 0.19])
    probes.block_ratio[-1] = last
    assert probes.final_median_ratio == pytest.approx(0.25)
    assert probes.final_near_identity == pytest.approx(4 / 9)  # 0.05, 0.1, 0.15, 0.19 < NEAR_IDENTITY
    assert NEAR_IDENTITY == 0.2  # the threshold, which the README's tables quote
    probes.grad_norm[:] = 1.0
    probes.grad_norm[:, 0] = [0.5, 0.02]  # the first 3x3 layer
    probes.grad_norm[:, -1] = [0.25, 0.4]  # the last one
    assert probes.first_to_last_gradient.tolist() == pytest.approx([2.0, 0.05])


def test_a_run_without_probes_and_a_probes_file_of_another_net(trained: Path, tmp_path: Path) -> None:  # noqa: F811
    run = shutil.copytree(trained / "resnet20" / "seed0", tmp_path / "run")
    (run / "probes.jsonl").unlink()
    assert training_probes(run) is None
    shutil.copy(trained / "plain20" / "seed0" / "probes.jsonl", run / "probes.jsonl")  # no block ratios
    with pytest.raises(RunDirError, match=r"probes.jsonl does not hold 9 values of analysis/block_ratio"):
        training_probes(run)


def test_the_figures_share_one_colour_scale_and_draw_a_line_per_block(trained: Path) -> None:  # noqa: F811
    runs = [training_probes(trained / n / "seed0") for n in ("plain20", "resnet20")]
    assert all(r is not None for r in runs)
    fig = gradients_figure(runs)  # type: ignore[arg-type]
    from matplotlib.collections import QuadMesh

    panels = [ax for ax in fig.axes if ax.get_xlabel() == "iteration" and ax.collections]
    heatmaps = [c for ax in panels for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(heatmaps) == 2 and heatmaps[0].norm is heatmaps[1].norm
    assert type(heatmaps[0].norm).__name__ == "LogNorm"
    assert heatmaps[0].get_array().shape == (18, 2)  # layers x analysis points
    ratio_axes = [ax for ax in fig.axes if ax.get_yscale() == "log" and ax.lines]
    assert len(ratio_axes) == 1 and len([ln for ln in ratio_axes[0].lines if ln.get_label()[0] != "_"]) == 2
    blocks = blocks_figure([r for r in runs if r is not None and r.residual])
    (ax,) = blocks.axes
    assert len(ax.lines) == 9 + 2  # one per block, the median, the near-identity line
    median = next(ln for ln in ax.lines if ln.get_label() == "median")
    assert median.get_linewidth() > ax.lines[0].get_linewidth()


def test_write_and_analyze(cli, trained: Path, tmp_path: Path) -> None:  # noqa: F811
    runs = [training_probes(trained / "plain20" / "seed0")]
    files = write_training_figures(runs, tmp_path / "plain-only")  # type: ignore[arg-type]
    assert files.gradients_png.is_file() and files.blocks_png is None
    result = cli(
        "analyze", trained / "plain20" / "seed0", trained / "resnet20" / "seed0",
        "--images", "20", "--out", tmp_path / "out", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("gradients.png", "gradients.svg", "blocks.png", "blocks.svg", "blocks_summary.csv"):
        assert (tmp_path / "out" / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "out" / "blocks_summary.csv").open()))
    assert len(rows) == 1 and rows[0]["name"] == "resnet20" and rows[0]["iteration"] == "20"
    assert "Over training" in result.stdout

"""analysis/landscape.py (Li et al. 2018) on tiny trained runs: filter-normalised directions, the
trained model at the grid's centre, seeded surfaces, the csv and figures, and the CLI's refusals."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_analysis import trained  # noqa: F401  (the module fixture: tiny plain20 and resnet20 runs)

from resbench.analysis.landscape import filter_normalised_direction, landscape_run
from resbench.analysis.trained import final_model
from resbench.data import build_data
from resbench.hardware import autocast, resolve_precision
from resbench.report import landscape_figure, write_landscapes


def test_the_direction_is_filter_normalised_and_zero_on_biases_and_bn(trained: Path) -> None:  # noqa: F811
    _, model, _ = final_model(trained / "resnet20" / "seed0")
    direction = filter_normalised_direction(model, torch.Generator().manual_seed(0))
    for (name, p), d in zip(model.named_parameters(), direction, strict=True):
        assert d.shape == p.shape
        if p.dim() <= 1:  # BN weights and biases, the fc bias
            assert not d.any(), name
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5), (
                name
            )
            assert not torch.equal(d, p.detach())


def test_the_centre_is_the_trained_model_on_the_training_images(trained: Path) -> None:  # noqa: F811
    run = trained / "resnet20" / "seed0"
    x = landscape_run(run, dim=2, points=3, span=0.5, images=40, device="cpu")
    assert x.loss.shape == x.error.shape == (3, 3)
    cfg, model, saved = final_model(run)  # measured independently: the same seeded training images
    cpu = torch.device("cpu")
    data = build_data(cfg.data, cpu)
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:40]
    images = data.normalize(data.train.images[pick]).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last).eval()
    with torch.no_grad(), autocast(cpu, resolve_precision(saved["precision"], cpu)):  # as the run: bf16 here
        logits = model(images)
    expected = F.cross_entropy(logits.float(), data.train.labels[pick]).item()
    assert x.centre_loss == pytest.approx(expected, rel=1e-6)
    assert x.loss[1, 1] < x.loss[0, 0] and x.loss[1, 1] < x.loss[2, 2]  # a trained model sits in a dip


def test_a_seed_gives_one_surface(trained: Path) -> None:  # noqa: F811
    run = trained / "plain20" / "seed0"
    a, b, c = (landscape_run(run, dim=1, points=5, images=30, seed=s, device="cpu") for s in (1, 1, 2))
    assert a.loss.tolist() == b.loss.tolist() and a.loss.tolist() != c.loss.tolist()
    assert a.loss[2] == c.loss[2]  # the centre is the model whatever the direction


def test_the_csv_and_the_shared_contour_levels(trained: Path, tmp_path: Path) -> None:  # noqa: F811
    runs = [
        landscape_run(trained / n / "seed0", dim=2, points=3, images=20, device="cpu")
        for n in ("plain20", "resnet20")
    ]
    fig = landscape_figure(runs)
    panels = [ax for ax in fig.axes if ax.get_xlabel() == "alpha"]
    assert len(panels) == 2
    levels = [list(ax.collections[0].levels) for ax in panels]
    assert levels[0] == levels[1] and len(levels[0]) == 20
    files = write_landscapes(runs, tmp_path)
    rows = list(csv.DictReader(files.landscape_csv.open()))
    assert len(rows) == 2 * 9 and files.figure_png.name == "landscape_2d.png" and files.figure_svg.is_file()
    centre = next(r for r in rows if r["name"] == "resnet20" and r["alpha"] == r["beta"] == "0.0")
    assert float(centre["loss"]) == pytest.approx(runs[1].centre_loss)
    one_d = write_landscapes(
        [landscape_run(trained / "plain20" / "seed0", dim=1, points=3, images=20, device="cpu")], tmp_path
    )
    assert (
        one_d.figure_png.name == "landscape_1d.png"
        and len(list(csv.DictReader(one_d.landscape_csv.open()))) == 3
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--points", "4"], "odd number"),
        (["--points", "1"], "odd number"),
        (["--span", "0"], "must be a finite number above 0"),
        (["--span", "inf"], "must be a finite number above 0"),
        (["--span", "nan"], "must be a finite number above 0"),
        (["--dim", "3"], "give 1 or 2"),
        (["--images", "100000"], "the training set of"),
    ],
)
def test_bad_inputs_exit_2(cli, trained: Path, tmp_path: Path, args: list[str], message: str) -> None:  # noqa: F811
    result = cli(
        "landscape", trained / "resnet20" / "seed0", "--out", tmp_path / "out", "--device", "cpu", *args
    )
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_the_cli_writes_the_files(cli, trained: Path, tmp_path: Path) -> None:  # noqa: F811
    result = cli(
        "landscape", trained / "plain20" / "seed0", trained / "resnet20" / "seed0", "--points", "3",
        "--images", "20", "--out", tmp_path, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "landscape_2d.png").is_file() and "Loss landscapes" in result.stdout
    assert cli("landscape", tmp_path / "nope").exit_code == 2


def test_an_exploding_corner_does_not_flatten_the_readable_levels(trained: Path) -> None:  # noqa: F811
    """One huge loss (a plain net far from its minimum) must not push every level but one into the
    bottom of the scale: levels stop at LANDSCAPE_LEVELS_SPAN x the lowest loss, colours are log-spread."""
    from dataclasses import replace

    from resbench.report import LANDSCAPE_LEVELS_SPAN

    x = landscape_run(trained / "plain20" / "seed0", dim=2, points=3, images=20, device="cpu")
    loss = np.full((3, 3), 2.0)
    loss[1, 1], loss[0, 0] = 1.0, 1e6
    fig = landscape_figure([replace(x, loss=loss)])
    contours = fig.axes[0].collections[0]
    assert contours.levels[0] == pytest.approx(1.0)
    assert contours.levels[-1] == pytest.approx(LANDSCAPE_LEVELS_SPAN)
    assert contours.norm.vmin == pytest.approx(1.0) and type(contours.norm).__name__ == "LogNorm"
    assert "not drawn" in fig.axes[-1].get_ylabel()

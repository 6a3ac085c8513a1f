"""analysis/lesion.py: blocks deleted at test time (Veit et al. 2016), on tiny nets on CPU; the lesion
figure and lesion.csv (report.py), `resbench analyze --lesion` and `compare --analyze`."""

import copy
import csv
import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_evaluate import TINY_RUN
from torch import nn

from resbench import checkpoint, config
from resbench.analysis.lesion import (
    Deleted,
    Lesion,
    LesionOptions,
    deleted,
    draw_deletions,
    lesion_labels,
    lesion_run,
    sites,
)
from resbench.errors import ConfigError
from resbench.models import build_model
from resbench.rundir import read_summary
from resbench.train import train

# depth 14: two blocks per stage, so each stage has a block of unchanged shape and the plain twin has
# something to delete besides its two downsampling blocks (stage2.0, stage3.0)
TINY_NET = ["model.depth=14", *TINY_RUN, "run.device=cpu", "run.precision=fp32", "analysis.images=32"]
TEST_IMAGES = 40  # learnable_root's test set


@pytest.fixture(scope="module")
def runs(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained plain net and its residual twin: runs/plain20/seed0, runs/resnet20/seed0."""
    runs = tmp_path_factory.mktemp("runs")
    for name in ("plain20", "resnet20"):
        train(config.load(name, [*TINY_NET, f"data.root={learnable_root}"]), runs / name / "seed0")
    return runs


@pytest.fixture(scope="module")
def lesions(runs: Path) -> list[Lesion]:
    return [lesion_run(runs / n / "seed0", TEST_IMAGES, 3, 2, 0, "cpu") for n in ("plain20", "resnet20")]


def tiny_model(shortcut: str | None) -> nn.Module:
    """A tiny net whose BN statistics are not the identity's: a few train-mode passes set them."""
    residual = shortcut is not None
    overrides = ["model.depth=14", "model.width=4", f"model.residual={str(residual).lower()}"]
    model = build_model(
        config.load("resnet20", [*overrides, *([f"model.shortcut={shortcut}"] * residual)]).model
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
@pytest.mark.parametrize("block", ["stage1.1", "stage2.0"])  # same shape, and downsampling
def test_deleting_a_block_whose_branch_is_zero_leaves_the_logits_unchanged(shortcut: str, block: str) -> None:
    """A residual block deleted is relu(shortcut(x)): what it computes when F(x) = 0, with an identity,
    option A or a projection (where the ReLU matters: a projection's output has negative values)."""
    model = tiny_model(shortcut)
    x = torch.randn(8, 3, 32, 32)
    site = next(s for s in sites(model) if s.name == block)
    assert isinstance(site.replacement, Deleted) and site.downsampling == (block == "stage2.0")
    with torch.no_grad():
        with deleted(model, [site]):
            before = model(x)  # the trained branch, deleted
        intact = model(x)
        assert not torch.allclose(before, intact)  # a deletion that changes nothing would pass anything
        end = site.stage[site.position].bn2
        end.weight.zero_()
        end.bias.zero_()
        zeroed = model(x)
        with deleted(model, [site]):
            gone = model(x)
        if shortcut == "C":  # a projection's output has negative values: the ReLU must stay
            assert isinstance(site.replacement, Deleted)
            without_relu = dataclasses.replace(site, replacement=site.replacement.shortcut)
            with deleted(model, [without_relu]):
                assert not torch.allclose(model(x), zeroed)
    torch.testing.assert_close(gone, zeroed, rtol=0, atol=1e-6)


def test_a_deleted_plain_block_is_the_identity_and_is_put_back_afterwards() -> None:
    model = tiny_model(None)
    x = torch.randn(8, 3, 32, 32)
    by_name = {s.name: s for s in sites(model)}
    by_hand = copy.deepcopy(model)
    by_hand.stage1[0] = nn.Identity()
    by_hand.stage3[1] = nn.Identity()
    blocks = (model.stage1[0], model.stage3[1])
    with torch.no_grad():
        intact = model(x)
        with deleted(model, [by_name["stage1.0"], by_name["stage3.1"]]):
            torch.testing.assert_close(model(x), by_hand(x), rtol=0, atol=0)
        assert not torch.equal(intact, by_hand(x))
        assert (model.stage1[0], model.stage3[1]) == blocks  # nothing leaks into the next measurement
        torch.testing.assert_close(model(x), intact, rtol=0, atol=0)
        with pytest.raises(RuntimeError), deleted(model, [by_name["stage1.1"]]):
            raise RuntimeError("a measurement that fails")
    assert not isinstance(model.stage1[1], nn.Identity)
    assert by_name["stage2.0"].replacement is None and by_name["stage2.0"].downsampling


def test_a_plain_nets_downsampling_blocks_are_skipped_with_the_reason(lesions: list[Lesion]) -> None:
    plain, resnet = lesions
    skipped = {b.name: b.skipped for b in plain.blocks if b.error is None}
    assert set(skipped) == {"stage2.0", "stage3.0"}
    assert "plain downsampling block (stride 2, 4 -> 8 planes)" in str(skipped["stage2.0"])
    assert [b.name for b in plain.deletable] == ["stage1.0", "stage1.1", "stage2.1", "stage3.1"]
    assert [b.downsampling for b in plain.blocks] == [False, False, True, False, True, False]
    assert [b.index for b in resnet.blocks] == [1, 2, 3, 4, 5, 6] and len(resnet.deletable) == 6
    assert [r.k for r in plain.random] == [1, 2, 3] and all(len(r.errors) == 2 for r in plain.random)
    assert all(len(set(d)) == r.k for r in plain.random for d in r.deleted)
    assert not {"stage2.0", "stage3.0"} & {name for r in plain.random for d in r.deleted for name in d}


def test_the_baseline_is_the_runs_own_test_error_and_a_zeroed_branch_costs_nothing(
    runs: Path, lesions: list[Lesion], tmp_path: Path
) -> None:
    """On every test image, in fp32 on CPU, the baseline is summary.json's test error to the bit: the
    same model, images and evaluation as training's. A block whose branch outputs zero, deleted, gives
    the baseline again."""
    for lesion, name in zip(lesions, ("plain20", "resnet20"), strict=True):
        assert lesion.baseline == read_summary(runs / name / "seed0").test_error
        assert lesion.precision == "fp32" and lesion.images == TEST_IMAGES and lesion.chance == 90.0
    run = shutil.copytree(runs / "resnet20" / "seed0", tmp_path / "resnet20" / "seed0")
    saved = checkpoint.load(run / "last.pt")
    weights = dict(saved["model"])
    for key in ("stage2.1.bn2.weight", "stage2.1.bn2.bias", "stage3.0.bn2.weight", "stage3.0.bn2.bias"):
        weights[key] = torch.zeros_like(weights[key])
    checkpoint.save({**saved, "model": weights}, run / "last.pt")
    zeroed = lesion_run(run, TEST_IMAGES, 1, 1, 0, "cpu")
    errors = {b.name: b.error for b in zeroed.blocks}
    assert errors["stage2.1"] == errors["stage3.0"] == zeroed.baseline


def test_the_same_seed_draws_the_same_blocks_and_another_seed_others() -> None:
    draws = draw_deletions(9, 5, 4, seed=0)
    assert draws == draw_deletions(9, 5, 4, seed=0)
    assert draws != draw_deletions(9, 5, 4, seed=1)
    assert [len(per_k) for per_k in draws] == [4] * 5
    assert all(
        len(d) == k and d == sorted(set(d)) and max(d) < 9 for k, per_k in enumerate(draws, 1) for d in per_k
    )
    assert len(draw_deletions(3, 10, 2, seed=0)) == 3  # K = min(k_max, deletable blocks)


def test_lesion_csv_has_a_row_per_measurement_and_the_figure_a_series_per_run(
    lesions: list[Lesion], tmp_path: Path
) -> None:
    from resbench.report import lesion_figure, write_lesion

    files = write_lesion(lesions, tmp_path)
    rows = list(csv.DictReader(files.lesion_csv.open()))
    kinds = Counter((r["name"], r["kind"]) for r in rows)
    assert kinds == {
        ("plain20", "baseline"): 1, ("plain20", "block"): 6, ("plain20", "random"): 3 * 2,
        ("resnet20", "baseline"): 1, ("resnet20", "block"): 6, ("resnet20", "random"): 3 * 2,
    }  # fmt: skip
    skipped = next(r for r in rows if r["name"] == "plain20" and r["block"] == "stage2.0")
    assert skipped["error"] == "" and skipped["downsampling"] == "true" and "no shortcut" in skipped["note"]
    k2 = [r for r in rows if r["name"] == "resnet20" and r["kind"] == "random" and r["k"] == "2"]
    assert [r["draw"] for r in k2] == ["0", "1"] and all(len(r["deleted"].split(";")) == 2 for r in k2)
    assert float(k2[0]["error"]) == lesions[1].random[1].errors[0]
    assert files.figure_png.stat().st_size > 10_000 and files.figure_svg.is_file()

    fig = lesion_figure(lesions)
    left, right = fig.axes
    labels = lesion_labels(lesions)
    assert labels == ["plain20", "resnet20"]
    for ax in (left, right):
        series = [line for line in ax.lines if line.get_label() in labels]
        assert [line.get_label() for line in series] == labels
        assert any(line.get_label() == "chance (90%)" for line in ax.lines)
    plain_series = next(line for line in left.lines if line.get_label() == "plain20")
    assert list(plain_series.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert torch.isnan(torch.tensor(plain_series.get_ydata(), dtype=torch.float64)).tolist() == [
        False, False, True, False, True, False
    ]  # fmt: skip
    bands = left.patches  # the grey bands behind the downsampling blocks, the only patches there
    assert [(b.get_x(), b.get_width()) for b in bands] == [(2.5, 1.0), (4.5, 1.0)]  # stage2.0, stage3.0
    assert bands[0].get_label() == "downsampling block (plain: cannot be deleted)"
    assert list(right.lines[0].get_xdata()) == [0, 1, 2, 3]  # from the baseline at k = 0


def test_cli_analyze_lesion_writes_the_files_and_the_table(cli, runs: Path, tmp_path: Path) -> None:
    plain, resnet = runs / "plain20" / "seed0", runs / "resnet20" / "seed0"
    options = "--images 20 --device cpu --lesion-k 2 --lesion-draws 2 --lesion-images 40".split()
    result = cli("analyze", plain, resnet, "--out", tmp_path, *options, "--lesion")
    assert result.exit_code == 0, result.output
    for name in ("lesion.png", "lesion.svg", "lesion.csv", "figure7.png"):
        assert (tmp_path / name).is_file(), name
    assert "Lesions (Veit et al. 2016)" in result.stdout and "│ plain20 " in result.stdout
    assert "(K = 2)" in result.stdout and "not deletable: a plain block" in result.stdout
    assert str(tmp_path / "lesion.csv") in result.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lesion", "--lesion-k", "0"], "--lesion-k 0: must be at least 1"),
        (["--lesion", "--lesion-draws", "0"], "--lesion-draws 0: must be at least 1"),
        (["--lesion", "--lesion-images", "41"], "--lesion-images 41: the test set of"),
        (["--lesion-k", "3"], "need --lesion"),
    ],
)
def test_cli_analyze_lesion_refuses_bad_options(
    cli, runs: Path, tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = cli(
        "analyze", runs / "resnet20" / "seed0", "--images", "8", "--out", out, "--device", "cpu", *options
    )
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in " ".join(result.stderr.split())
    assert not out.exists()  # refused before anything was written


def test_lesion_options_are_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="--lesion-seed -1: must be 0 or more"):
        LesionOptions(seed=-1)
    with pytest.raises(ConfigError, match="--lesion-images 0: must be at least 1"):
        LesionOptions(images=0)


def test_compare_analyze_adds_the_lesion_study_to_the_report(cli, runs: Path, tmp_path: Path) -> None:
    plain, resnet = runs / "plain20" / "seed0", runs / "resnet20" / "seed0"
    result = cli("compare", plain, resnet, "--no-train", "--analyze", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lesion.png").is_file() and (tmp_path / "figure7.png").is_file()
    rows = list(csv.DictReader((tmp_path / "lesion.csv").open()))
    assert {r["images"] for r in rows} == {"32"}  # analysis.images, as Figure 7
    md = (tmp_path / "summary.md").read_text()
    assert "## Lesions (Veit et al. 2016)" in md and "![Lesion study](lesion.png)" in md
    assert "| plain20 | 32 |" in md and "| resnet20 | 32 |" in md
    assert "Lesions (Veit et al. 2016)" in result.stdout


def test_runs_of_one_net_get_lines_of_their_own(lesions: list[Lesion]) -> None:
    """Two seeds (or sweep values) of one plain/residual depth are told apart by colour; plain nets
    stay in reds and ResNets in blues."""
    from dataclasses import replace

    from resbench.report import lesion_colours

    twice = [*lesions, *(replace(x, seed=x.seed + 1) for x in lesions)]
    colours = lesion_colours(twice)
    assert len(set(colours)) == len(twice)
    for x, (r, _, b, _) in zip(twice, colours, strict=True):
        assert (b > r) == x.residual

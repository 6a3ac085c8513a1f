"""analysis/responses.py: Figure 7 on trained runs (the block ratio's definition, seeds averaged, the
figure), training-time logging through the probe, and `resbench analyze`. probe.py's measurements
themselves are test_probe.py.
trained.final_model's refusals are here too; analysis/evaluate.py is test_evaluate.py."""

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_compare import fake_run
from test_evaluate import TINY_RUN
from test_probe import net

from resbench import config
from resbench.analysis.responses import ModelResponses, RunAnalysis, analyze_run, summarise_analyses
from resbench.data import build_data
from resbench.errors import ConfigError
from resbench.probe import LayerResponse, block_ratios
from resbench.report import figure7, write_analysis
from resbench.train import train


def test_the_block_ratio_divides_by_the_shortcut_not_the_input() -> None:
    """Defect 8a: at a stage change option A subsamples and zero-pads x, so ||shortcut(x)|| < ||x||;
    the ratio is ||F(x)|| / ||shortcut(x)||, and the text that reports it says so."""
    from resbench.analysis.responses import AnalysisReport
    from resbench.models import ShortcutA
    from resbench.report import analysis_markdown

    model = net(8)
    block = model.stage2[0]
    assert isinstance(block.shortcut, ShortcutA)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        h = model.stage1(F.relu(model.bn1(model.conv1(x))))  # stage2.0's input
        branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(h)))))
        by_shortcut = (branch.norm() / block.shortcut(h).norm()).item()
        by_input = (branch.norm() / h.norm()).item()
    ratio = {r.name: r.ratio for r in block_ratios(model, x, batch_size=5)}["stage2.0"]
    assert ratio == pytest.approx(by_shortcut, rel=1e-4)
    assert by_input != pytest.approx(by_shortcut, rel=0.1)  # stride 2 keeps a quarter of x
    report = AnalysisReport([ModelResponses("resnet8", 8, True, 1, [1.0], ratio)], [])
    assert "‖F(x)‖/‖shortcut(x)‖" in analysis_markdown(report)
    analysis = RunAnalysis(Path("r/seed0"), "resnet8", 8, True, [LayerResponse(1, "l", 1.0)], [])
    summary = summarise_analyses([dataclasses.replace(analysis, ratios=block_ratios(model, x))])
    assert "(||F(x)|| / ||shortcut(x)||; 0% would be the identity)" in summary.findings[0]


def test_sweep_values_are_models_of_their_own_not_seeds() -> None:
    """compare --sweep ... --analyze: runs of one name that differ in their overrides are averaged
    apart, and plain and residual twins are paired within the same values."""

    def run(name: str, residual: bool, std: float, overrides: tuple[str, ...]) -> RunAnalysis:
        where = Path(name, *overrides, "seed0")
        return RunAnalysis(where, name, 20, residual, [LayerResponse(1, "l0", std)], [], overrides)

    wd0 = ("optim.weight_decay=0",)
    summary = summarise_analyses(
        [run("plain20", False, 2.0, ()), run("resnet20", True, 1.0, ()),
         run("plain20", False, 0.5, wd0), run("resnet20", True, 1.0, wd0)]
    )  # fmt: skip
    assert sorted((m.name, m.seeds, m.stds[0]) for m in summary.models) == [
        ("plain20", 1, 2.0),
        ("plain20 [optim.weight_decay=0]", 1, 0.5),
        ("resnet20", 1, 1.0),
        ("resnet20 [optim.weight_decay=0]", 1, 1.0),
    ]
    assert [f for f in summary.findings if "x the responses of" in f] == [
        "plain20 layers have 2.00x the responses of resnet20 (mean std 2.000 vs 1.000): larger, as the "
        "paper expects",
        "plain20 [optim.weight_decay=0] layers have 0.50x the responses of resnet20 [optim.weight_decay=0] "
        "(mean std 0.500 vs 1.000): not larger: against the paper, which expects larger",
    ]


def test_seeds_are_averaged_and_findings_compare_twins() -> None:
    def run(
        name: str, depth: int, residual: bool, stds: list[float], ratio: float | None = None, seed: int = 0
    ) -> RunAnalysis:
        from resbench.probe import BlockRatio

        return RunAnalysis(
            Path(name) / f"seed{seed}",
            name,
            depth,
            residual,
            [LayerResponse(i + 1, f"l{i}", s) for i, s in enumerate(stds)],
            [BlockRatio("b", ratio)] if ratio is not None else [],
        )

    summary = summarise_analyses(
        [
            run("plain20", 20, False, [3.0, 3.0]),
            run("resnet20", 20, True, [1.0, 2.0], 0.1),
            run("resnet20", 20, True, [1.0, 0.0], 0.3, seed=1),
        ]
    )
    plain, resnet = summary.models
    assert resnet.seeds == 2 and resnet.stds == [1.0, 1.0] and resnet.median_ratio == pytest.approx(0.2)
    assert plain.median_ratio is None
    assert "resnet20: the median block changes its input by 20%" in summary.findings[0]
    assert "plain20 layers have 3.00x the responses of resnet20" in summary.findings[1]
    assert summary.findings[1].endswith("larger, as the paper expects")


def test_figure7_layout() -> None:
    from resbench.analysis.responses import AnalysisReport

    models = [
        ModelResponses("plain20", 20, False, 1, [3.0, 1.0, 2.0], None),
        ModelResponses("resnet20", 20, True, 2, [1.0, 0.5, 0.8], 0.1),
    ]
    fig = figure7(AnalysisReport(models, []))
    top, bottom = fig.axes
    assert len(top.lines) == len(bottom.lines) == 2
    assert list(top.lines[0].get_ydata()) == [3.0, 1.0, 2.0]
    assert list(bottom.lines[0].get_ydata()) == [3.0, 2.0, 1.0]  # sorted, descending
    assert top.lines[0].get_linestyle() == "--" and top.lines[1].get_linestyle() == "-"
    assert top.lines[1].get_label() == "ResNet-20 (2 seeds)"
    assert "original" in top.get_xlabel() and "sorted" in bottom.get_xlabel()


@pytest.fixture(scope="module")
def trained(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    for name in ("plain20", "resnet20"):
        cfg = config.load(
            name,
            [*TINY_RUN, f"data.root={learnable_root}", "analysis.every=10", "analysis.images=32"],
        )
        train(cfg, runs / name / "seed0")
    return runs


def test_analyze_a_trained_run_and_write_the_files(trained: Path, tmp_path: Path) -> None:
    analyses = [
        analyze_run(trained / n / "seed0", images=40, per_channel=True) for n in ("plain20", "resnet20")
    ]
    assert [len(a.responses) for a in analyses] == [18, 18] and len(analyses[1].ratios) == 9
    files = write_analysis(analyses, summarise_analyses(analyses), tmp_path)
    rows = list(csv.DictReader(files.layers_csv.open()))
    assert len(rows) == 36 and set(rows[0]) == {"run", "layer_index", "layer_name", "std", "std_per_channel"}
    assert rows[0]["layer_name"] == "stage1.0.bn1" and float(rows[0]["std"]) > 0
    assert files.figure_png.stat().st_size > 10_000


def test_training_logs_responses_and_gradient_norms(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "resnet20" / "seed0"))
    events.Reload()
    assert {"analysis/responses", "analysis/grad_norm"} <= set(events.Tags()["histograms"])
    for scalar in ("responses", "grad_norm"):
        for where in ("first", "middle", "last"):
            assert [e.step for e in events.Scalars(f"analysis/{scalar}/{where}")] == [10, 20]
    assert all(e.value > 0 for e in events.Scalars("analysis/grad_norm/last"))


def test_training_writes_the_vectors_layer_by_layer_to_probes_jsonl(trained: Path) -> None:
    """probes.jsonl keeps what a histogram loses: which layer, which block. At the last iteration the
    model probed is the saved one, so its block ratios and branch gammas are last.pt's."""
    from resbench.analysis.trained import final_model
    from resbench.probe import fixed_test_images
    from resbench.rundir import read_probes

    plain, resnet = (read_probes(trained / n / "seed0") for n in ("plain20", "resnet20"))
    assert [p["iteration"] for p in resnet] == [p["iteration"] for p in plain] == [10, 20]
    assert set(plain[0]) == {"iteration", "analysis/responses", "analysis/grad_norm"}
    assert all(len(p["analysis/responses"]) == len(p["analysis/grad_norm"]) == 18 for p in plain + resnet)
    assert all(len(p["analysis/block_ratio"]) == len(p["analysis/branch_gamma"]) == 9 for p in resnet)
    assert resnet[0]["analysis/grad_norm"] != resnet[1]["analysis/grad_norm"]

    cfg, model, _ = final_model(trained / "resnet20" / "seed0")
    data = build_data(cfg.data, torch.device("cpu"))
    ratios = [r.ratio for r in block_ratios(model, fixed_test_images(data, cfg.analysis.images))]
    assert resnet[-1]["analysis/block_ratio"] == pytest.approx(ratios, rel=1e-5)
    blocks = [b for stage in (model.stage1, model.stage2, model.stage3) for b in stage]
    gammas = [b.bn2.weight.norm().item() for b in blocks]
    assert resnet[-1]["analysis/branch_gamma"] == pytest.approx(gammas, rel=1e-6)


def test_a_damaged_probes_jsonl_is_named(trained: Path, tmp_path: Path) -> None:
    import shutil

    from resbench.errors import RunDirError
    from resbench.rundir import read_probes, truncate_metrics

    run = shutil.copytree(trained / "resnet20" / "seed0", tmp_path / "run")
    with (run / "probes.jsonl").open("a") as f:
        f.write('{"iteration": 30, "analysis/responses": "oops"}\n')
    with pytest.raises(RunDirError, match=r"probes.jsonl.*line 3 is not an analysis record"):
        read_probes(run)
    (run / "probes.jsonl").write_text((trained / "resnet20" / "seed0" / "probes.jsonl").read_text())
    truncate_metrics(run, 15)  # a resume from iteration 15 logs 20 again
    assert [p["iteration"] for p in read_probes(run)] == [10]


def test_the_probe_keeps_resume_exact(learnable_root: Path, tmp_path: Path) -> None:
    from test_train import InterruptAt

    from resbench import checkpoint
    from resbench.errors import Interrupted

    cfg = config.load(
        "resnet20",
        [
            "model.depth=8",
            "model.width=4",
            "optim.batch_size=16",
            "schedule.iterations=20",
            "schedule.milestones=[]",
            f"data.root={learnable_root}",
            "analysis.every=4",
            "analysis.images=16",
            "run.log_every=5",
        ],
    )
    train(cfg, tmp_path / "a")
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "b", InterruptAt(7))
    train(cfg, tmp_path / "b", resume=True)
    a = checkpoint.load(tmp_path / "a" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_analyze(cli, trained: Path, tmp_path: Path) -> None:
    result = cli(
        "analyze",
        trained / "plain20" / "seed0",
        trained / "resnet20" / "seed0",
        "--images",
        "20",
        "--out",
        tmp_path,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "median block changes its input" in result.stdout and (tmp_path / "figure7.svg").is_file()
    missing = cli("analyze", tmp_path / "nope")
    assert (
        missing.exit_code == 2  # a bad argument, as compare's unknown name; a damaged run dir exits 1
        and "not a run directory" in missing.stderr
        and "Traceback" not in missing.output
    )
    fake = fake_run(tmp_path / "runs", "plain20", 0, 6, 9)  # metrics but no checkpoint
    no_ckpt = cli("analyze", fake)
    assert no_ckpt.exit_code == 1 and "no last.pt" in no_ckpt.stderr


def test_analyze_refuses_more_images_than_the_test_set_holds(cli, trained: Path, tmp_path: Path) -> None:
    """--images 41 on a 40-image test set measured 40 and said nothing."""
    run = trained / "resnet20" / "seed0"
    result = cli("analyze", run, "--images", "41", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "41 test images asked for" in result.stderr
    assert "the test set has 40: ask for 40 or fewer" in result.stderr
    assert not (tmp_path / "out").exists()
    all_of_them = cli("analyze", run, "--images", "40", "--out", tmp_path / "out", "--device", "cpu")
    assert all_of_them.exit_code == 0, all_of_them.output


def test_compare_analyze_adds_figure7(cli, trained: Path, tmp_path: Path) -> None:
    result = cli(
        "compare",
        trained / "plain20" / "seed0",
        trained / "resnet20" / "seed0",
        "--no-train",
        "--analyze",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figure7.png").is_file() and (tmp_path / "figure6.png").is_file()
    md = (tmp_path / "summary.md").read_text()
    assert "## Layer responses (Figure 7)" in md and "| resnet20 | 1 | 18 |" in md


@pytest.mark.parametrize("case", ["weights of another depth", "the plain twin's last.pt"])
def test_analyze_refuses_a_checkpoint_of_another_net(cli, trained: Path, tmp_path: Path, case: str) -> None:
    import shutil

    from resbench import checkpoint

    run = tmp_path / "resnet20" / "seed0"
    shutil.copytree(trained / "resnet20" / "seed0", run)
    if case == "the plain twin's last.pt":  # same weight shapes: only the saved config tells them apart
        shutil.copy(trained / "plain20" / "seed0" / "last.pt", run / "last.pt")
        expected = "differs from the config saved in last.pt in model.residual, model.shortcut, run.name"
    else:
        checkpoint.save({**checkpoint.load(run / "last.pt"), "model": net(8).state_dict()}, run / "last.pt")
        expected = "Missing key(s) in state_dict"
    result = cli("analyze", run, "--images", "8", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    if case == "the plain twin's last.pt":
        assert f"{run / 'config.yaml'} is not the config this run was trained with" in result.stderr
        assert expected in result.stderr and "this run's own last.pt" in result.stderr
    else:
        assert f"{run / 'last.pt'} does not hold the model of {run / 'config.yaml'}" in result.stderr
        assert expected in result.stderr and "--force" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("depths", [(20, 8), (8, 20)])
def test_runs_of_one_name_must_be_one_net(depths: tuple[int, int]) -> None:
    """Two runs named plain20 with other depths: their layers were averaged index by index
    (or an IndexError, depending on the order)."""
    runs = [
        RunAnalysis(
            Path(f"runs{i}/plain20/seed0"),
            "plain20",
            d,
            False,
            [LayerResponse(k + 1, f"l{k}", 1.0) for k in range(d - 2)],
            [],
        )
        for i, d in enumerate(depths)
    ]
    with pytest.raises(
        ConfigError, match=r"runs named plain20 are different nets: runs0/plain20/seed0 "
    ):
        summarise_analyses(runs)


def test_one_run_named_twice_is_refused() -> None:
    one = RunAnalysis(Path("runs/plain20/seed0"), "plain20", 8, False, [LayerResponse(1, "l0", 1.0)], [])
    again = RunAnalysis(Path("runs/plain20/../plain20/seed0"), *[one.name, 8, False, one.responses, []])
    with pytest.raises(
        ConfigError, match=r"runs/plain20/seed0 and runs/plain20/\.\./plain20/seed0 both name"
    ):
        summarise_analyses([one, again])

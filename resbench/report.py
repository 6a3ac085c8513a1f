"""Reports on disk: Figure 6 with summary.md and summary.csv (compare), Figure 7 with layers.csv (analyze).

    write_report(report, out_dir)               -> ReportFiles
    write_analysis(analyses, summary, out_dir)  -> AnalysisFiles

Figure 6 follows the paper's layout: one panel for the plain nets and one for the ResNets, error
(%) against iterations, dashed lines for training error and bold lines for test error, one colour
per depth, a ±std band where a model has several seeds, and a grey dotted line at chance level.
Drawing is headless (Agg). A folder that cannot be written is a `ReportError` naming it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from resbench.analysis.responses import AnalysisReport, RunAnalysis
from resbench.compare import Report
from resbench.errors import ReportError, WriteError
from resbench.files import atomic_open, atomic_write
from resbench.rundir import read_env


@contextmanager
def writable(out_dir: Path) -> Iterator[None]:
    """Create `out_dir` for the block's writes; a folder that is a file, read-only or on a full disk
    becomes one message naming it (the files already there stay whole: every write is atomic). A
    WriteError already names the file that failed and the fix, and passes unchanged."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        yield
    except WriteError:
        raise
    except OSError as err:
        why = "it is a file" if out_dir.is_file() else err.strerror or str(err)
        raise ReportError(f"cannot write the report to {out_dir}: {why}. Choose another --out.") from None


@dataclass(frozen=True)
class ReportFiles:
    out_dir: Path
    figure_png: Path
    figure_svg: Path
    summary_md: Path
    summary_csv: Path
    tensorboard_command: str


def tensorboard_command(report: Report) -> str:
    spec = ",".join(f"{r.cfg.run.name}-seed{r.cfg.run.seed}:{r.run_dir}" for r in report.records)
    return f"tensorboard --logdir_spec {spec}"


def figure6(report: Report) -> Figure:
    """Two panels (plain, residual): dashed = training error, bold = test error, colour = depth,
    dotted grey = chance (what a net that has learned nothing scores)."""
    depths = sorted({c.depth for c in report.curves})
    colours = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(depths)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True, layout="constrained")
    for ax, residual, title, panel in (
        (axes[0], False, "plain", "plain nets"),
        (axes[1], True, "ResNet", "ResNets"),
    ):
        for c in (c for c in report.curves if c.residual == residual):
            colour = colours[c.depth]
            label = f"{title}-{c.depth}"
            if c.name.split("-")[0] not in (f"plain{c.depth}", f"resnet{c.depth}"):  # "-quick": a preset
                label += f" ({c.name})"
            for x, mean, std, style, width, alpha, kind in (
                (c.train_iterations, c.train_mean, c.train_std, "--", 1.0, 0.12, "train"),
                (c.test_iterations, c.test_mean, c.test_std, "-", 2.2, 0.2, "test"),
            ):
                ax.plot(x, mean, style, color=colour, linewidth=width, label=f"{label} {kind}")
                if c.n > 1:  # ±1 std over seeds
                    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=alpha, linewidth=0)
        for chance in sorted({r.chance_error for r in report.rows}):
            ax.axhline(chance, color="0.5", linestyle=":", linewidth=1.2, label=f"chance ({chance:.0f}%)")
        ax.set_title(panel if any(c.residual == residual for c in report.curves) else f"{panel}: no runs")
        ax.set_xlabel("iter.")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    n = max(c.n for c in report.curves)
    dataset = report.records[0].cfg.data.dataset.upper().replace("CIFAR", "CIFAR-")
    fig.suptitle(
        f"{dataset}: dashed = training error (running, augmented), bold = test error"
        + (f"; bands ±1 std over {n} seeds" if n > 1 else ""),
        fontsize=10,
    )
    return fig


def summary_table(report: Report) -> list[dict[str, object]]:
    """The rows as plain values, for summary.csv and summary.md."""
    return [
        {
            "model": r.name,
            "depth": r.depth,
            "block": r.block,
            "net": "residual" if r.residual else "plain",
            "shortcut": r.shortcut or "",
            "params": r.params,
            "seeds": len(r.seeds),
            "train_error_mean": round(r.train_error.mean, 3),
            "train_error_std": round(r.train_error.std, 3),
            "test_error_mean": round(r.test_error.mean, 3),
            "test_error_std": round(r.test_error.std, 3),
            "paper_test_error": r.paper_test_error if r.paper_test_error is not None else "",
            "paper_approximate": r.paper_approximate,
            "delta_to_paper": round(r.delta_to_paper, 3) if r.delta_to_paper is not None else "",
            "iterations": r.iterations,
            "wall_time_s": round(r.wall_time.mean, 1),
        }
        for r in report.rows
    ]


def summary_markdown(report: Report, tb_command: str) -> str:
    lines = [
        "# resbench compare",
        "",
        "| model | depth | block | shortcut | params | train error (%) "
        "| test error (%) | paper test error (%) | Δ to paper | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        delta = "" if r.delta_to_paper is None else f"{r.delta_to_paper:+.2f}"
        lines.append(
            f"| {r.name} | {r.depth} | {r.block} | {r.shortcut or 'none (plain)'} | {r.params:,} | "
            f"{r.train_error} | {r.test_error} | {r.paper_text} | {delta} | {r.wall_time.mean / 60:.1f} min |"
        )
    n = {len(r.seeds) for r in report.rows}
    lines += [
        "",
        f"Mean ± std over {'/'.join(map(str, sorted(n)))} seed(s); final model, never the best "
        "epoch. Training error is the running error on augmented batches over the last log window.",
        "Paper: Table 6 (ResNets, option A); ≈: read off Figure 6 (plain nets).",
        "",
        "## Verdict",
        "",
    ]
    lines += [f"- **{f.status}**: {f.text}" for f in report.findings] or ["- nothing to pair"]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    lines += ["", "## Overlay in TensorBoard", "", "```", tb_command, "```", "", "## Runs", ""]
    for r in report.records:
        env = read_env(r.run_dir)
        lines.append(
            f"- `{r.run_dir}`: torch {env.get('torch')}, resbench {env.get('resbench')}, "
            f"{env.get('device_name')} ({env.get('precision')}), commit {env.get('git_commit')}"
        )
    lines += ["", "## Configs", ""]
    for name in dict.fromkeys(r.cfg.run.name for r in report.records):
        group = [r for r in report.records if r.cfg.run.name == name]
        seeds = ", ".join(str(r.cfg.run.seed) for r in group)
        lines += [f"### {name} (seeds {seeds})", "", "```yaml", group[0].cfg.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def analysis_markdown(summary: AnalysisReport) -> str:
    lines = [
        "## Layer responses (Figure 7)",
        "",
        "![Figure 7](figure7.png)",
        "",
        "| model | seeds | 3x3 layers | mean std | max std | median block ‖F(x)‖/‖shortcut(x)‖ |",
        "|---|---|---|---|---|---|",
    ]
    for m in summary.models:
        lines.append(
            f"| {m.name} | {m.seeds} | {len(m.stds)} | {m.mean_std:.3f} | {max(m.stds):.3f} "
            f"| {m.ratio_text} |"
        )
    return "\n".join([*lines, "", *(f"- {f}" for f in summary.findings), ""])


def save_figure(fig: Figure, png: Path, svg: Path) -> None:
    try:
        for path, fmt in ((png, "png"), (svg, "svg")):
            with atomic_open(path, "wb") as f:
                fig.savefig(f, format=fmt, dpi=150)
    finally:
        plt.close(fig)


def write_report(report: Report, out_dir: Path, analysis: AnalysisReport | None = None) -> ReportFiles:
    tb = tensorboard_command(report)
    files = ReportFiles(
        out_dir,
        out_dir / "figure6.png",
        out_dir / "figure6.svg",
        out_dir / "summary.md",
        out_dir / "summary.csv",
        tb,
    )
    table = summary_table(report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    markdown = summary_markdown(report, tb)
    if analysis is not None:
        markdown += "\n" + analysis_markdown(analysis)
    with writable(out_dir):
        save_figure(figure6(report), files.figure_png, files.figure_svg)
        atomic_write(files.summary_csv, buffer.getvalue())
        atomic_write(files.summary_md, markdown)
    return files


# --------------------------------------------------------------------------------------------
# Figure 7


@dataclass(frozen=True)
class AnalysisFiles:
    figure_png: Path
    figure_svg: Path
    layers_csv: Path


def figure7(summary: AnalysisReport) -> Figure:
    """The paper's layout: response std by layer index (top) and sorted in descending order (bottom);
    one line per model, seeds averaged. Plain nets dashed, ResNets solid."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharey=True, layout="constrained")
    for i, m in enumerate(summary.models):
        style = dict(
            color=plt.get_cmap("tab10")(i % 10),
            linestyle="-" if m.residual else "--",
            linewidth=1.5,
            label=f"{'ResNet' if m.residual else 'plain'}-{m.depth}"
            + (f" ({m.seeds} seeds)" if m.seeds > 1 else ""),
        )
        layers = range(1, len(m.stds) + 1)
        top.plot(layers, m.stds, **style)
        bottom.plot(layers, sorted(m.stds, reverse=True), **style)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Standard deviation of each 3x3 layer's response (after BN, before ReLU or addition)", fontsize=10
    )
    return fig


def write_analysis(analyses: list[RunAnalysis], summary: AnalysisReport, out_dir: Path) -> AnalysisFiles:
    files = AnalysisFiles(out_dir / "figure7.png", out_dir / "figure7.svg", out_dir / "layers.csv")
    per_channel = any(r.std_per_channel is not None for a in analyses for r in a.responses)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["run", "layer_index", "layer_name", "std", *(["std_per_channel"] if per_channel else [])]
    )
    for a in analyses:
        for r in a.responses:
            extra = [f"{r.std_per_channel:.6g}"] if per_channel else []
            writer.writerow([str(a.run_dir), r.index, r.name, f"{r.std:.6g}", *extra])
    with writable(out_dir):
        save_figure(figure7(summary), files.figure_png, files.figure_svg)
        atomic_write(files.layers_csv, buffer.getvalue())
    return files

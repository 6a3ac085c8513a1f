"""Reports on disk: Figure 6 and the depth figure with summary.md and summary.csv (compare), Figure 7
with layers.csv and the lesion figure with lesion.csv (analyze); and the TensorBoard command and
address that overlay a compare's runs.

    write_report(report, out_dir)               -> ReportFiles
    write_analysis(analyses, summary, out_dir)  -> AnalysisFiles
    write_lesion(lesions, out_dir)              -> LesionFiles

Figure 6 follows the paper's layout: one panel for the plain nets and one for the ResNets, error
(%) against iterations, dashed lines for training error and bold lines for test error, one colour
per depth, a ±std band where a model has several seeds, and a grey dotted line at chance level.
The depth figure (depth.png, two depths or more) draws the final errors against depth, a line for
the plain nets and one for the ResNets. Figure 7 keeps Figure 6's colour for each depth.
Drawing is headless (Agg). A folder that cannot be written is a `ReportError` naming it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from resbench.analysis.landscape import Landscape
from resbench.analysis.lesion import Lesion, lesion_labels
from resbench.analysis.responses import AnalysisReport, RunAnalysis
from resbench.analysis.training import NEAR_IDENTITY, RunProbes
from resbench.compare import Report, Row, RunRecord, overrides_label
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
    tensorboard_url: str = ""  # the overlay in a browser: one colour per model, the error curves
    depth_png: Path | None = None  # error against depth, where the runs cover two depths or more
    depth_svg: Path | None = None


# --------------------------------------------------------------------------------------------
# The overlay in TensorBoard

TENSORBOARD_URL = "http://localhost:6006/"  # where `tensorboard` serves by default


@dataclass(frozen=True)
class Overlay:
    """What TensorBoard reads to overlay a compare's runs, and what it names them."""

    folders: dict[str, Path]  # --logdir_spec NAME:FOLDER (absolute); {"": FOLDER}: --logdir FOLDER
    runs: list[str]  # the compare's runs as TensorBoard names them: plain20/seed0
    others: bool  # the folders hold other runs too (more seeds, other sweep values)


def overlay(report: Report) -> Overlay:
    """Each run's model folder (RUNS_DIR/<run.name>), under that folder's name, so that TensorBoard
    names a run `plain20/seed0` or `resnet20/optim.lr=0.05/seed0`. (Given a run folder itself, it
    names the run `NAME/.`.) `--logdir_spec` splits at every comma and the first colon: where a
    folder's path holds a comma, the overlay reads the folder all runs share instead."""
    folders: dict[str, Path] = {}
    ours = [r.run_dir.resolve() for r in report.records]
    for run_dir, r in zip(ours, report.records, strict=True):
        model_dir = next((up for up in run_dir.parents[:2] if up.name == r.cfg.run.name), run_dir.parent)
        if model_dir not in folders.values():
            base = model_dir.name.replace(",", "_").replace(":", "_")
            name, k = base, 1
            while name in folders:  # two folders of one name, in two runs dirs: base-2, base-3, ...
                k += 1
                name = f"{base}-{k}"
            folders[name] = model_dir
    if any("," in str(folder) for folder in folders.values()):
        folders = {"": Path(os.path.commonpath(ours)) if len(ours) > 1 else ours[0].parent}
    names = {folder: name for name, folder in folders.items()}
    runs = []
    for run_dir in ours:
        folder = next(f for f in names if f in run_dir.parents)
        runs.append("/".join(filter(None, [names[folder], run_dir.relative_to(folder).as_posix()])))
    logged = {p.parent for folder in folders.values() for p in folder.rglob("events.out.tfevents.*")}
    return Overlay(folders, runs, bool(logged - set(ours)))


def tensorboard_command(report: Report) -> str:
    """`tensorboard --logdir_spec plain20:/abs/runs/plain20,...`: works from any directory."""
    folders = overlay(report).folders
    if "" in folders:
        return f"tensorboard --logdir {shlex.quote(str(folders['']))}"
    return "tensorboard --logdir_spec " + shlex.quote(",".join(f"{n}:{f}" for n, f in folders.items()))


def tensorboard_url(report: Report) -> str:
    """TensorBoard's time series with one colour per model (the run name up to its last `/`, so that
    seeds share it) and only the error curves; where the folders hold other runs too, a run filter
    keeps these. Query parameters as TensorBoard 2.x reads them (runColorGroup, tagFilter, runFilter)."""
    o = overlay(report)
    query = {"runColorGroup": "regex:(.*)/", "tagFilter": "error"}
    if o.others:
        query["runFilter"] = "^(" + "|".join(re.escape(run) for run in o.runs) + ")$"
    return f"{TENSORBOARD_URL}?{urlencode(query, quote_via=quote, safe=':()*/|^$')}#timeseries"


def depth_colours(depths: Iterable[int]) -> dict[int, tuple[float, float, float, float]]:
    """One colour per depth, the shallowest first: Figures 6 and 7 of the same runs agree on them."""
    return {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(sorted(set(depths)))}


def figure6(report: Report) -> Figure:
    """Two panels (plain, residual) per sweep value, one row each (one row without a sweep):
    dashed = training error, bold = test error with a marker at each evaluation, colour = depth,
    dash-dot grey = the lr drops (schedule.milestones), dotted grey = chance (what a net that has
    learned nothing scores)."""
    depths = sorted({c.depth for c in report.curves})
    colours = depth_colours(depths)
    # Models of one net under other names (a run started from another with model.init_from, a
    # run.name) would share a label and a colour: they get their names and colours of their own.
    twins = Counter((c.residual, c.depth, c.overrides) for c in report.curves)
    names = list(dict.fromkeys(c.name for c in report.curves))
    own = {n: plt.get_cmap("tab10")((len(depths) + i) % 10) for i, n in enumerate(names)}
    groups = list(dict.fromkeys(c.overrides for c in report.curves))  # a panel row per sweep value
    height = 4.5 if len(groups) == 1 else 3.4 * len(groups) + 0.8
    fig, axes = plt.subplots(
        len(groups), 2, figsize=(12, height), sharex=True, sharey=True, layout="constrained", squeeze=False
    )
    for row, overrides in zip(axes, groups, strict=True):
        curves = [c for c in report.curves if c.overrides == overrides]
        for ax, residual, title, panel in (
            (row[0], False, "plain", "plain nets"),
            (row[1], True, "ResNet", "ResNets"),
        ):
            for c in (c for c in curves if c.residual == residual):
                shared = twins[c.residual, c.depth, c.overrides] > 1
                colour = own[c.name] if shared else colours[c.depth]
                label = f"{title}-{c.depth}"
                preset_only = c.name.split("-")[0] in (f"plain{c.depth}", f"resnet{c.depth}")  # "-quick"
                if shared or not preset_only:
                    label += f" ({c.name})"
                for x, mean, std, style, width, alpha, marker, kind in (
                    (c.train_iterations, c.train_mean, c.train_std, "--", 1.0, 0.12, "", "train"),
                    (c.test_iterations, c.test_mean, c.test_std, "-", 2.2, 0.2, "o", "test"),
                ):
                    ax.plot(
                        x, mean, style, color=colour, linewidth=width, marker=marker, markersize=3.5,
                        label=f"{label} {kind}",
                    )  # fmt: skip
                    if c.n > 1:  # ±1 std over seeds
                        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=alpha, linewidth=0)
            for chance in sorted({r.chance_error for r in report.rows}):
                ax.axhline(chance, color="0.5", linestyle=":", linewidth=1.2, label=f"chance ({chance:.0f}%)")
            gammas = {c.gamma for c in curves}
            for i, m in enumerate(sorted({m for c in curves for m in c.milestones})):
                drop = f"lr ×{next(iter(gammas)):g}" if len(gammas) == 1 else "lr drop"
                ax.axvline(m, color="0.45", linestyle="-.", linewidth=0.9, label=drop if i == 0 else None)
            name = panel if any(c.residual == residual for c in curves) else f"{panel}: no runs"
            ax.set_title(f"{name}, {overrides}" if overrides else name, fontsize=10 if overrides else None)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        row[0].set_ylabel("error (%)")
    for ax in axes[-1]:
        ax.set_xlabel("iter.")
    n = max(c.n for c in report.curves)
    dataset = report.records[0].cfg.data.dataset.upper().replace("CIFAR", "CIFAR-")
    fig.suptitle(
        f"{dataset}: dashed = training error (running, augmented), bold = test error (o: evaluations), "
        "dash-dot = lr drops" + (f"; bands ±1 std over {n} seeds" if n > 1 else ""),
        fontsize=10,
    )
    return fig


def summary_table(report: Report) -> list[dict[str, object]]:
    """The rows as plain values, for summary.csv and summary.md."""
    with_overrides = any(r.overrides for r in report.rows)  # a sweep: one row per model and values
    return [
        {
            "model": r.name,
            **({"overrides": r.overrides} if with_overrides else {}),
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
    with_overrides = any(r.overrides for r in report.rows)  # a sweep: one row per model and values
    lines = [
        "# resbench compare",
        "",
        f"| model |{' overrides |' * with_overrides} depth | block | shortcut | params | train error (%) "
        "| test error (%) | paper test error (%) | Δ to paper | wall time (mean per run) |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * with_overrides,
    ]
    for r in report.rows:
        delta = "" if r.delta_to_paper is None else f"{r.delta_to_paper:+.2f}"
        model = f"{r.name} | {r.overrides}" if with_overrides else r.name
        lines.append(
            f"| {model} | {r.depth} | {r.block} | {r.shortcut or 'none (plain)'} | {r.params:,} | "
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
    url = f"then open {tensorboard_url(report)} (one colour per model, the error curves only)"
    lines += ["", "## Overlay in TensorBoard", "", "```", tb_command, "```", "", url, "", "## Runs", ""]
    for r in report.records:
        env = read_env(r.run_dir)
        lines.append(
            f"- `{r.run_dir}`: torch {env.get('torch')}, resbench {env.get('resbench')}, "
            f"{env.get('device_name')} ({env.get('precision')}), commit {env.get('git_commit') or 'unknown'}"
        )
    lines += ["", "## Configs", ""]
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in report.records:
        groups.setdefault((r.cfg.run.name, overrides_label(r.cfg, report.swept)), []).append(r)
    for (name, overrides), group in groups.items():
        seeds = ", ".join(str(r.cfg.run.seed) for r in group)
        title = f"{name}, {overrides}" if overrides else name
        lines += [f"### {title} (seeds {seeds})", "", "```yaml", group[0].cfg.to_yaml().rstrip(), "```", ""]
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


# --------------------------------------------------------------------------------------------
# Error against depth

NET_COLOURS = {False: "tab:red", True: "tab:blue"}  # plain, ResNet
GROUP_STYLES = ("-", "--", ":", "-.")  # one per group of rows (sweep values, block, shortcut)
TRAIN_ERROR_LABEL = "final training error (%)\nrunning, on augmented batches"  # Row.train_error


def depth_lines(rows: list[Row]) -> dict[tuple[bool, str], list[Row]]:
    """The depth figure's lines, keyed by (residual, group): the group names what else tells rows
    apart, namely the sweep's values (Row.overrides), the block where both blocks are compared and
    the shortcut where several options are; "" where nothing does. A row whose depth its line holds
    already (configs that differ in their run.name alone) starts a line of its own, named by row."""
    blocks = {r.block for r in rows}
    shortcuts = {r.shortcut for r in rows if r.residual}
    lines: dict[tuple[bool, str], list[Row]] = defaultdict(list)
    for r in rows:
        parts = [r.overrides, r.block if len(blocks) > 1 else ""]
        parts.append(f"shortcut {r.shortcut}" if r.residual and len(shortcuts) > 1 else "")
        key = (r.residual, ", ".join(filter(None, parts)))
        if any(other.depth == r.depth for other in lines[key]):
            key = (r.residual, ", ".join(filter(None, [key[1], r.name])))
        lines[key].append(r)
    return {key: sorted(line, key=lambda r: r.depth) for key, line in lines.items()}


def depth_figure(report: Report) -> Figure | None:
    """Final error against depth, the picture of the degradation: training error (left) and test
    error (right), a red line for the plain nets and a blue one for the ResNets, ±1 std over seeds as
    error bars. Rows that differ in more than depth and shortcuts (`depth_lines`) get a line each,
    told apart by line style. None where the runs cover fewer than two depths."""
    depths = sorted({r.depth for r in report.rows})
    if len(depths) < 2:
        return None
    lines = depth_lines(report.rows)
    groups = dict.fromkeys(group for _, group in lines)
    styles = {group: GROUP_STYLES[i % len(GROUP_STYLES)] for i, group in enumerate(groups)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    panels = ((axes[0], "train", TRAIN_ERROR_LABEL), (axes[1], "test", "final test error (%)"))
    for ax, kind, ylabel in panels:
        for (residual, group), rows in lines.items():
            stats = [r.train_error if kind == "train" else r.test_error for r in rows]
            ax.errorbar(
                [r.depth for r in rows],
                [s.mean for s in stats],
                yerr=[s.std for s in stats],
                color=NET_COLOURS[residual],
                linestyle=styles[group],
                marker="o",
                capsize=4,
                label=("ResNet" if residual else "plain") + (f" ({group})" if group else ""),
            )
        if depths[-1] > 10 * depths[0]:  # 20 to 1202: a linear axis would crowd the shallow nets
            ax.set_xscale("log")
        ax.set_xticks(depths, [str(d) for d in depths], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("depth (weighted layers)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, handlelength=4)  # long enough to show a dashed line as dashed
    n = max(len(r.seeds) for r in report.rows)
    dataset = report.records[0].cfg.data.dataset.upper().replace("CIFAR", "CIFAR-")
    fig.suptitle(
        f"{dataset}, {report.rows[0].iterations:,} iterations: final error against depth"
        + (f"; error bars ±1 std over {n} seeds" if n > 1 else ", 1 seed each"),
        fontsize=10,
    )
    return fig


def depth_markdown() -> str:
    return "\n".join(
        [
            "## Error against depth",
            "",
            "![Final error against depth](depth.png)",
            "",
            "Plain nets that train worse as they get deeper show the degradation; ResNets should not.",
            "",
        ]
    )


def save_figure(fig: Figure, png: Path, svg: Path) -> None:
    try:
        for path, fmt in ((png, "png"), (svg, "svg")):
            with atomic_open(path, "wb") as f:
                fig.savefig(f, format=fmt, dpi=150)
    finally:
        plt.close(fig)


def write_report(
    report: Report,
    out_dir: Path,
    analysis: AnalysisReport | None = None,
    lesions: Sequence[Lesion] = (),
) -> ReportFiles:
    """Figure 6, the depth figure (two depths or more), summary.csv and summary.md in `out_dir`;
    summary.md also names Figure 7 (`analysis`) and the lesion figure (`lesions`), written beside it."""
    tb = tensorboard_command(report)
    with_depth = len({r.depth for r in report.rows}) > 1  # as depth_figure decides
    files = ReportFiles(
        out_dir,
        out_dir / "figure6.png",
        out_dir / "figure6.svg",
        out_dir / "summary.md",
        out_dir / "summary.csv",
        tb,
        tensorboard_url(report),
        out_dir / "depth.png" if with_depth else None,
        out_dir / "depth.svg" if with_depth else None,
    )
    table = summary_table(report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    markdown = summary_markdown(report, tb)
    if with_depth:
        markdown += "\n" + depth_markdown()
    if analysis is not None:
        markdown += "\n" + analysis_markdown(analysis)
    if lesions:
        markdown += "\n" + lesion_markdown(lesions)
    with writable(out_dir):
        save_figure(figure6(report), files.figure_png, files.figure_svg)
        depth = depth_figure(report)
        if depth is not None and files.depth_png is not None and files.depth_svg is not None:
            save_figure(depth, files.depth_png, files.depth_svg)
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
    one line per model, seeds averaged, in Figure 6's colour for its depth. Plain nets dashed,
    ResNets solid. The std axis is logarithmic: a deep plain net's early layers reach stds tens of
    times the others', which on a linear axis flattens every other line into one."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharey=True, layout="constrained")
    colours = depth_colours(m.depth for m in summary.models)
    for m in summary.models:
        style = dict(
            color=colours[m.depth],
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
    stds = [s for m in summary.models for s in m.stds if s > 0]
    narrow = bool(stds) and max(stds) < 10 * min(stds)  # under a decade: label 0.8, 0.9 too
    for ax in (top, bottom):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.5, 1, 2, 5, 10: read as numbers
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if narrow else NullFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are counted
        ax.set_ylabel("std (log scale)")
        ax.grid(alpha=0.3, which="both")
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


# --------------------------------------------------------------------------------------------
# Lesions (Veit et al. 2016)


@dataclass(frozen=True)
class LesionFiles:
    figure_png: Path
    figure_svg: Path
    lesion_csv: Path


LESION_CSV_COLUMNS = (
    "run", "name", "seed", "kind", "k", "draw", "block_index", "block", "downsampling", "deleted", "error",
    "note", "images", "draw_seed",
)  # fmt: skip


def lesion_colours(lesions: Sequence[Lesion]) -> list[tuple[float, float, float, float]]:
    """One colour per run, in the order given: plain nets in reds and ResNets in blues, as in the
    depth figure, darker the deeper, and a shade of its own for each run of one depth (seeds, a
    sweep), so that no two lines look alike."""
    colours: list[tuple[float, float, float, float]] = [(0.0, 0.0, 0.0, 1.0)] * len(lesions)
    for residual, cmap in ((False, "Reds"), (True, "Blues")):
        group = sorted((x.depth, i) for i, x in enumerate(lesions) if x.residual == residual)
        for rank, (_, i) in enumerate(group):
            shade = 0.8 if len(group) == 1 else 0.5 + 0.45 * rank / (len(group) - 1)
            colours[i] = plt.get_cmap(cmap)(shade)
    return colours


def lesion_figure(lesions: Sequence[Lesion]) -> Figure:
    """Left: the test error with each block deleted alone, against the block's index in network
    order, a line per run (ResNets solid with circles in blues, plain nets dash-dot with squares in
    reds), the run's baseline dashed, and grey bands behind the downsampling blocks, where a plain
    net's line has a gap: it cannot delete them. Right: the mean test error with k random blocks
    deleted, ±1 std over the draws as a band, from k = 0 (the baseline). Both: a dotted grey line at
    chance."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    colours = lesion_colours(lesions)
    downsampling = sorted({b.index for x in lesions for b in x.blocks if b.downsampling})
    band = "downsampling block"
    if any(b.error is None for x in lesions for b in x.blocks):
        band += " (plain: cannot be deleted)"
    for n, i in enumerate(downsampling):
        left.axvspan(i - 0.5, i + 0.5, color="0.9", zorder=0, label=band if n == 0 else None)
    for n, (x, label) in enumerate(zip(lesions, lesion_labels(lesions), strict=True)):
        colour = colours[n]
        style = dict(
            color=colour,
            linestyle="-" if x.residual else "-.",
            marker="o" if x.residual else "s",
            markersize=4,
            linewidth=1.4,
        )
        errors = [b.error if b.error is not None else float("nan") for b in x.blocks]
        left.plot([b.index for b in x.blocks], errors, label=label, **style)
        baseline = "dashed: each run's baseline, nothing deleted" if n == 0 else None
        left.axhline(x.baseline, color=colour, linestyle="--", linewidth=0.9, label=baseline)
        ks = [0, *(r.k for r in x.random)]
        mean = [x.baseline, *(r.mean for r in x.random)]
        std = [0.0, *(r.std for r in x.random)]
        right.plot(ks, mean, label=label, **style)
        low, high = ([m + sign * s for m, s in zip(mean, std, strict=True)] for sign in (-1, 1))
        right.fill_between(ks, low, high, color=colour, alpha=0.15, linewidth=0)
    for ax in (left, right):
        for chance in sorted({x.chance for x in lesions}):
            ax.axhline(chance, color="0.5", linestyle=":", linewidth=1.2, label=f"chance ({chance:.0f}%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks are counted
        ax.set_ylim(0, 100)
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3
        )  # below: no data hidden
    left.set_xlabel("deleted block (index in network order)")
    left.set_title("one block deleted", fontsize=10)
    right.set_xlabel("blocks deleted at random (k)")
    right.set_title("k blocks deleted: mean ± std over draws", fontsize=10)
    images = sorted({x.images for x in lesions})
    draws = sorted({len(r.errors) for x in lesions for r in x.random})
    fig.suptitle(
        "Lesions (Veit et al. 2016): blocks of the final model deleted at test time (ResNet: the "
        f"shortcut alone; plain: the identity), eval mode, {'/'.join(f'{i:,}' for i in images)} test images"
        + (f", {'/'.join(map(str, draws))} draws per k" if draws else ""),
        fontsize=10,
    )
    return fig


def lesion_rows(lesions: Sequence[Lesion]) -> list[dict[str, object]]:
    """lesion.csv in long format: per run a baseline row, a row per block (kind=block, error empty
    and a note where it cannot be deleted) and a row per random draw (kind=random)."""
    rows: list[dict[str, object]] = []
    for x in lesions:
        run = {"run": str(x.run_dir), "name": x.name, "seed": x.seed}
        common = {"images": x.images, "draw_seed": x.draw_seed}
        rows.append({**run, "kind": "baseline", "k": 0, "error": f"{x.baseline:.6g}", **common})
        for b in x.blocks:
            rows.append(
                {
                    **run,
                    "kind": "block",
                    "k": 1,
                    "block_index": b.index,
                    "block": b.name,
                    "downsampling": str(b.downsampling).lower(),
                    "deleted": b.name if b.error is not None else "",
                    "error": "" if b.error is None else f"{b.error:.6g}",
                    "note": b.skipped or "",
                    **common,
                }
            )
        for r in x.random:
            for draw, (deleted, error) in enumerate(zip(r.deleted, r.errors, strict=True)):
                rows.append(
                    {
                        **run,
                        "kind": "random",
                        "k": r.k,
                        "draw": draw,
                        "deleted": ";".join(deleted),
                        "error": f"{error:.6g}",
                        **common,
                    }
                )
    return [{column: row.get(column, "") for column in LESION_CSV_COLUMNS} for row in rows]


def lesion_markdown(lesions: Sequence[Lesion]) -> str:
    """The compare report's lesion section: the figure, and a line per run."""
    lines = [
        "## Lesions (Veit et al. 2016)",
        "",
        "![Lesion study](lesion.png)",
        "",
        "Blocks of each final model deleted at test time, in eval mode: a residual block replaced by its "
        "shortcut alone, a plain block of unchanged shape by the identity (a plain downsampling block "
        "cannot be deleted). Every number, per draw, is in lesion.csv.",
        "",
        "| run | test images | baseline (%) | worst single deletion (%) | mean at k = 1 (%) "
        "| mean ± std at k = K (%) | not deletable |",
        "|---|---|---|---|---|---|---|",
    ]
    for x, label in zip(lesions, lesion_labels(lesions), strict=True):
        worst = f"{x.worst.error:.2f} ({x.worst.name})" if x.worst and x.worst.error is not None else "-"
        first = f"{x.random[0].mean:.2f}" if x.random else "-"
        last = f"{x.random[-1].mean:.2f} ± {x.random[-1].std:.2f} (K = {x.random[-1].k})" if x.random else "-"
        skipped = len(x.blocks) - len(x.deletable)
        lines.append(
            f"| {label} | {x.images:,} | {x.baseline:.2f} | {worst} | {first} | {last} | {skipped or ''} |"
        )
    return "\n".join([*lines, ""])


def write_lesion(lesions: Sequence[Lesion], out_dir: Path) -> LesionFiles:
    """lesion.png, lesion.svg and lesion.csv in `out_dir`, each written atomically."""
    files = LesionFiles(out_dir / "lesion.png", out_dir / "lesion.svg", out_dir / "lesion.csv")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LESION_CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(lesion_rows(lesions))
    with writable(out_dir):
        save_figure(lesion_figure(lesions), files.figure_png, files.figure_svg)
        atomic_write(files.lesion_csv, buffer.getvalue())
    return files


# --------------------------------------------------------------------------------------------
# Over training, from probes.jsonl: gradient flow and residual branches


@dataclass(frozen=True)
class TrainingFiles:
    gradients_png: Path
    gradients_svg: Path
    blocks_png: Path | None  # None: no residual run among them
    blocks_svg: Path | None
    blocks_csv: Path | None


STAGE_COLOURS = ("tab:blue", "tab:orange", "tab:green")


def gradients_figure(runs: Sequence[RunProbes]) -> Figure:
    """Top: each run's weight-gradient norm per 3x3 layer (rows, first layer at the top) against
    iteration, on one log colour scale shared by every panel, so a plain and a residual twin read
    alike. Bottom: the first layer's norm over the last one's, one line per run (1: even flow)."""
    from matplotlib.colors import LogNorm

    values = np.concatenate([r.grad_norm[r.grad_norm > 0] for r in runs])
    norm = LogNorm(vmin=float(values.min()), vmax=float(values.max()))
    fig = plt.figure(figsize=(4.2 * len(runs) + 1.2, 7.5))
    grid = fig.add_gridspec(2, len(runs), height_ratios=(2.2, 1))
    mesh = None
    for i, run in enumerate(runs):
        ax = fig.add_subplot(grid[0, i])
        grads = np.where(run.grad_norm > 0, run.grad_norm, np.nan).T  # (layers, points)
        layers = np.arange(1, len(run.layers) + 1)
        mesh = ax.pcolormesh(run.iterations, layers, grads, norm=norm, cmap="viridis", shading="nearest")
        ax.invert_yaxis()
        ax.set(xlabel="iteration", ylabel="3x3 layer (1 = first)" if i == 0 else None)
        ax.set_title(f"{run.title}\n{run.name}, seed {run.seed}", fontsize="medium")
    fig.colorbar(mesh, ax=fig.axes, label="weight-gradient norm (log scale)", shrink=0.6)
    ax = fig.add_subplot(grid[1, :])
    for run in runs:
        ax.plot(run.iterations, run.first_to_last_gradient, ("-" if run.residual else "--"), label=run.label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(yscale="log", xlabel="iteration", ylabel="first / last layer gradient norm")
    ax.legend(fontsize="small")
    return fig


def blocks_figure(runs: Sequence[RunProbes]) -> Figure:
    """One panel per residual run: each block's ||F(x)|| / ||shortcut(x)|| against iteration (thin,
    coloured by stage), their median thick and black, and the NEAR_IDENTITY line; shared y axis."""
    residual = [r for r in runs if r.block_ratio is not None]
    fig, axes = plt.subplots(1, len(residual), figsize=(4.5 * len(residual), 4), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], residual, strict=True):
        assert run.block_ratio is not None
        for j, name in enumerate(run.blocks):
            stage = int(name.removeprefix("stage").split(".")[0])
            ax.plot(run.iterations, run.block_ratio[:, j], color=STAGE_COLOURS[stage - 1], lw=0.7, alpha=0.6)
        ax.plot(run.iterations, np.median(run.block_ratio, axis=1), color="black", lw=2.5, label="median")
        ax.axhline(NEAR_IDENTITY, color="grey", ls=":", lw=1, label=f"{NEAR_IDENTITY:g}")
        ax.set(xlabel="iteration", yscale="log")
        ax.set_title(f"{run.title}\n{run.name}, seed {run.seed}", fontsize="medium")
    axes[0][0].set_ylabel("||F(x)|| / ||shortcut(x)|| per block")
    handles = [plt.Line2D([], [], color=c, lw=1) for c in STAGE_COLOURS]
    axes[0][-1].legend(
        [*handles, *axes[0][-1].get_lines()[-2:]],
        ["stage 1", "stage 2", "stage 3", "median", f"near identity ({NEAR_IDENTITY:g})"],
        fontsize="small",
    )
    fig.tight_layout()
    return fig


BLOCKS_CSV_COLUMNS = ("run", "name", "seed", "weight_decay", "iteration", "median_ratio", "near_identity",
                      "train_error", "test_error")  # fmt: skip


def write_training_figures(runs: Sequence[RunProbes], out_dir: Path) -> TrainingFiles:
    """gradients.png/.svg for every run, and for the residual ones blocks.png/.svg and
    blocks_summary.csv (the last analysis point's median ratio and fraction of blocks below
    NEAR_IDENTITY, beside the final errors)."""
    residual = [r for r in runs if r.block_ratio is not None]
    files = TrainingFiles(
        out_dir / "gradients.png",
        out_dir / "gradients.svg",
        *(
            (out_dir / "blocks.png", out_dir / "blocks.svg", out_dir / "blocks_summary.csv")
            if residual
            else (None,) * 3
        ),
    )
    with writable(out_dir):
        save_figure(gradients_figure(runs), files.gradients_png, files.gradients_svg)
        if residual:
            assert files.blocks_png and files.blocks_svg and files.blocks_csv
            save_figure(blocks_figure(residual), files.blocks_png, files.blocks_svg)
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(BLOCKS_CSV_COLUMNS))
            writer.writeheader()
            for r in residual:
                writer.writerow(
                    {
                        "run": str(r.run_dir), "name": r.name, "seed": r.seed, "weight_decay": r.weight_decay,
                        "iteration": int(r.iterations[-1]), "median_ratio": r.final_median_ratio,
                        "near_identity": r.final_near_identity, "train_error": r.train_error,
                        "test_error": r.test_error,
                    }
                )  # fmt: skip
            atomic_write(files.blocks_csv, buffer.getvalue())
    return files


# --------------------------------------------------------------------------------------------
# Loss landscapes (Li et al. 2018)


@dataclass(frozen=True)
class LandscapeFiles:
    figure_png: Path
    figure_svg: Path
    landscape_csv: Path


LANDSCAPE_LEVELS_SPAN = 100  # the highest contour level, as a multiple of the lowest loss


def landscape_figure(landscapes: Sequence[Landscape]) -> Figure:
    """1-D: loss and error against alpha, one line per run (plain dashed). 2-D: one contour panel
    per run, every panel at the same log-spaced loss levels, the trained model marked at the centre."""
    if landscapes[0].betas is None:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
        for x in landscapes:
            style = "-" if x.residual else "--"
            top.plot(x.alphas, x.loss, style, label=f"{x.title} ({x.name})")
            bottom.plot(x.alphas, x.error, style)
        top.set(ylabel="training loss", yscale="log")
        bottom.set(xlabel="alpha (filter-normalised direction)", ylabel="training error (%)")
        top.legend(fontsize="small")
        fig.tight_layout()
        return fig
    from matplotlib.colors import LogNorm

    low = min(float(x.loss.min()) for x in landscapes)
    high = max(float(x.loss.max()) for x in landscapes)
    # As Li et al.'s vmax: a loss beyond 100x the lowest is off the chart, so that one exploding
    # corner of a plain net does not squeeze every readable level into the bottom of the scale.
    top = max(min(high, LANDSCAPE_LEVELS_SPAN * low), low * 1.01)
    levels = np.geomspace(low, top, 20)
    norm = LogNorm(levels[0], levels[-1])  # colours spread over the log levels, not crowded at one end
    fig, axes = plt.subplots(
        1, len(landscapes), figsize=(4.6 * len(landscapes), 4.4), squeeze=False, layout="constrained"
    )
    for n, (ax, x) in enumerate(zip(axes[0], landscapes, strict=True)):
        assert x.betas is not None
        contours = ax.contour(
            x.alphas, x.betas, x.loss, levels=levels, cmap="viridis", norm=norm, linewidths=0.9
        )
        ax.plot([0], [0], marker="*", color="red", markersize=10)
        ax.set(xlabel="alpha", ylabel="beta" if n == 0 else "", aspect="equal")
        ax.set_title(f"{x.title}\n{x.name}, seed {x.seed}", fontsize="medium")
    label = "training loss (shared log levels" + (f"; above {top:.3g} not drawn)" if top < high else ")")
    bar = fig.colorbar(contours, ax=list(axes[0]), label=label, shrink=0.8)
    bar.set_ticks(levels[::3], labels=[f"{v:.3g}" for v in levels[::3]])
    bar.ax.yaxis.set_minor_locator(plt.NullLocator())
    return fig


LANDSCAPE_CSV_COLUMNS = ("run", "name", "seed", "direction_seed", "images", "alpha", "beta", "loss", "error")


def write_landscapes(landscapes: Sequence[Landscape], out_dir: Path) -> LandscapeFiles:
    """landscape_{1d,2d}.png/.svg and landscape.csv (a row per run and grid point), atomically."""
    kind = "1d" if landscapes[0].betas is None else "2d"
    files = LandscapeFiles(
        out_dir / f"landscape_{kind}.png", out_dir / f"landscape_{kind}.svg", out_dir / "landscape.csv"
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LANDSCAPE_CSV_COLUMNS))
    writer.writeheader()
    for x in landscapes:
        betas = x.betas if x.betas is not None else [None]
        for j, beta in enumerate(betas):
            for i, alpha in enumerate(x.alphas):
                at = i if beta is None else (j, i)
                row = {"run": str(x.run_dir), "name": x.name, "seed": x.seed, "images": x.images}
                row |= {"direction_seed": x.direction_seed, "alpha": float(alpha)}
                row |= {"beta": "" if beta is None else float(beta)}
                writer.writerow(row | {"loss": float(x.loss[at]), "error": float(x.error[at])})
    with writable(out_dir):
        save_figure(landscape_figure(landscapes), files.figure_png, files.figure_svg)
        atomic_write(files.landscape_csv, buffer.getvalue())
    return files

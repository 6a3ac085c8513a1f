"""Figure 7 on trained runs: each run's layer responses and block ratios, and their summary.

    analyze_run(run_dir, images)    -> RunAnalysis      a run's final model, measured on fixed test images
    summarise_analyses(analyses)    -> AnalysisReport   seeds averaged, one line per model, and findings

§4.2 of the paper ("Analysis of Layer Responses"): residual functions that stay near zero give
small responses, and an identity is then easy to learn. The measurements themselves
(layer_responses, block_ratios, fixed_test_images) are resbench/probe.py's, which train.py also
uses during training; this module applies them to a trained run's final model. Nothing here
prints or draws (report.py draws Figure 7).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch

from resbench.analysis.trained import final_model
from resbench.data import build_data
from resbench.errors import ConfigError
from resbench.probe import BlockRatio, LayerResponse, block_ratios, fixed_test_images, layer_responses
from resbench.rundir import refuse_named_twice


@dataclass(frozen=True)
class RunAnalysis:
    run_dir: Path
    name: str
    depth: int
    residual: bool
    responses: list[LayerResponse]
    ratios: list[BlockRatio]  # empty for a plain net
    overrides: tuple[str, ...] = ()  # run.overrides: runs of one sweep differ in them, not in name


def analyze_run(
    run_dir: Path, images: int = 1000, per_channel: bool = False, device: torch.device | str = "cpu"
) -> RunAnalysis:
    """Responses and block ratios of a run's final model (its last.pt) on `images` test images."""
    cfg, model, _ = final_model(run_dir)
    model = model.to(device)
    x = fixed_test_images(build_data(cfg.data, torch.device(device)), images)
    return RunAnalysis(
        run_dir,
        cfg.run.name,
        cfg.model.depth,
        cfg.model.residual,
        layer_responses(model, x, per_channel),
        block_ratios(model, x),
        cfg.run.overrides,
    )


# --------------------------------------------------------------------------------------------
# Over runs


@dataclass(frozen=True)
class ModelResponses:
    """One model's responses, averaged over its seeds."""

    name: str
    depth: int
    residual: bool
    seeds: int
    stds: list[float]  # per layer, network order
    median_ratio: float | None  # median over blocks of ||F(x)|| / ||shortcut(x)||, residual nets only
    overrides: tuple[str, ...] = ()  # the sweep values `name` shows: twins are paired within them

    @property
    def mean_std(self) -> float:
        return statistics.fmean(self.stds)

    @property
    def ratio_text(self) -> str:
        return "" if self.median_ratio is None else f"{self.median_ratio:.1%}"


@dataclass(frozen=True)
class AnalysisReport:
    models: list[ModelResponses]
    findings: list[str]


def summarise_analyses(analyses: list[RunAnalysis]) -> AnalysisReport:
    """Average the runs of each model (by run name and overrides: the values of a sweep are not
    seeds) layer by layer; runs of one name must share an architecture, or their layers would be
    averaged with another net's."""
    refuse_named_twice((str(a.run_dir), a.run_dir) for a in analyses)
    shared = set.intersection(*(set(a.overrides) for a in analyses)) if analyses else set()
    groups: dict[tuple[str, tuple[str, ...]], list[RunAnalysis]] = defaultdict(list)
    for a in analyses:  # what every run overrides alike tells none apart: names show the rest
        groups[a.name, tuple(e for e in a.overrides if e not in shared)].append(a)
    models = []
    for (name, overrides), group in groups.items():
        if len({(a.depth, a.residual, len(a.responses)) for a in group}) > 1:
            raise ConfigError(
                f"runs named {name} are different nets: "
                + ", ".join(
                    f"{a.run_dir} (depth {a.depth}, {'residual' if a.residual else 'plain'})" for a in group
                )
                + ". Analyze them separately, or give each config its own run.name."
            )
        stds = [statistics.fmean(a.responses[i].std for a in group) for i in range(len(group[0].responses))]
        ratios = [b.ratio for a in group for b in a.ratios]
        models.append(
            ModelResponses(
                f"{name} [{','.join(overrides)}]" if overrides else name,
                group[0].depth,
                group[0].residual,
                len(group),
                stds,
                statistics.median(ratios) if ratios else None,
                overrides,
            )
        )
    models.sort(key=lambda m: (m.residual, m.depth))
    return AnalysisReport(models, _findings(models))


def _findings(models: list[ModelResponses]) -> list[str]:
    lines = []
    for m in models:
        if m.median_ratio is not None:
            lines.append(
                f"{m.name}: the median block changes its input by {m.median_ratio:.0%} "
                "(||F(x)|| / ||shortcut(x)||; 0% would be the identity)"
            )
    for m in (m for m in models if m.residual):
        plain = [p for p in models if not p.residual and p.overrides == m.overrides]
        twin = next((p for p in plain if p.depth == m.depth), None)
        if twin is not None:
            factor = twin.mean_std / m.mean_std
            verdict = "larger, as the paper expects"
            if factor <= 1:
                verdict = "not larger: against the paper, which expects larger"
            lines.append(
                f"{twin.name} layers have {factor:.2f}x the responses of {m.name} "
                f"(mean std {twin.mean_std:.3f} vs {m.mean_std:.3f}): {verdict}"
            )
    residual = sorted((m for m in models if m.residual), key=lambda m: (m.overrides, m.depth))
    for shallow, deep in pairwise(residual):
        if shallow.overrides != deep.overrides:  # deeper within one set of sweep values only
            continue
        smaller = deep.mean_std < shallow.mean_std
        lines.append(
            f"{deep.name} has {'smaller' if smaller else 'larger'} responses than {shallow.name} "
            f"({deep.mean_std:.3f} vs {shallow.mean_std:.3f}): the paper "
            f"expects smaller{'' if smaller else '; this run does not show it'}"
        )
    return lines

"""compare --backend ray against a real local Ray instance (ray.init(num_cpus=2)) on tiny runs.
Skipped where Ray is not installed (it is an optional extra: pip install "resbench[ray]")."""

import sys
from pathlib import Path

import pytest
from test_compare import TINY

from resbench import config
from resbench.errors import ResbenchError
from resbench.sweep import run_all_ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    yield
    ray.shutdown()


def tasks(root: Path, runs: Path, *names: str, extra: tuple[str, ...] = ()) -> list:
    out = []
    for name in names:
        cfg = config.load(name, [*TINY, f"data.root={root}", *extra])
        out.append((cfg, runs / cfg.run.name / "seed0"))
    return out


@pytest.mark.slow
def test_every_run_finishes_and_a_rerun_skips_them(local_ray, learnable_root: Path, tmp_path: Path) -> None:
    work = tasks(learnable_root, tmp_path, "plain20", "resnet20", "plain32")
    events = []
    outcomes = run_all_ray(work, on_event=events.append)
    assert [o.error for o in outcomes] == [None, None, None]
    assert all(o.summary.iterations == 12 for o in outcomes)
    assert {e.kind for e in events} >= {"start", "step", "log", "done"}
    stamps = {d: (d / "last.pt").stat().st_mtime_ns for _, d in work}
    again = run_all_ray(work)
    assert [o.summary for o in again] == [o.summary for o in outcomes]
    assert stamps == {d: (d / "last.pt").stat().st_mtime_ns for _, d in work}  # nothing retrained


@pytest.mark.slow
def test_a_failure_is_retried_a_divergence_not(local_ray, learnable_root: Path, tmp_path: Path) -> None:
    good = tasks(learnable_root, tmp_path, "plain20")
    diverging = tasks(learnable_root, tmp_path, "resnet20", extra=("optim.lr=1e12",))
    no_data = tasks(tmp_path / "no-data", tmp_path, "plain32")  # may pass on another node: retried
    notes = []
    outcomes = run_all_ray(
        good + diverging + no_data,
        retries=1,
        on_event=lambda e: notes.append(e.message) if e.kind == "note" else None,
    )
    assert outcomes[0].error is None
    assert outcomes[1].error.startswith("failed: training diverged")  # it would only diverge again
    assert outcomes[2].error.startswith("failed after 2 attempts")
    assert [n for n in notes if "retry" in n] == [n for n in notes if "plain32" in n and "retry 1 of 1" in n]
    assert any("retry 1 of 1" in n for n in notes)


def test_a_config_error_is_not_retried(local_ray, learnable_root: Path, tmp_path: Path) -> None:
    bad = tasks(learnable_root, tmp_path, "plain20", extra=("run.device=cuda",)) if not _has_cuda() else []
    if not bad:
        pytest.skip("needs a machine without CUDA")
    (outcome,) = run_all_ray(bad, retries=3)
    assert outcome.error.startswith("failed: run.device is 'cuda'")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_without_ray_the_message_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ResbenchError, match=r'pip install "resbench\[ray\]"'):
        run_all_ray([(config.load("plain20"), tmp_path)])

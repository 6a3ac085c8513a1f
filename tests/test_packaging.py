"""The wheel carries the bundled configs: `resbench show resnet56` works from `pip install .`, not
only from a checkout or an editable install."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_configs_ship_inside_the_wheel(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "hatchling" in build.stderr and "No matching distribution" in build.stderr:
        pytest.skip("the build backend (hatchling) cannot be fetched here")
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("resbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "resbench/configs/resnet56.yaml" in names and "resbench/configs/presets/quick.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from resbench import config; c = config.load('resnet56', preset='quick'); "
        "print(config.configs_dir(), c.model.depth, c.schedule.iterations)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    configs_dir, depth, iterations = out.stdout.split()
    assert configs_dir == str(site / "resbench" / "configs") and (depth, iterations) == ("56", "2000")

"""config.py: defaults, every validation rule, inheritance, overrides, presets, name lookup, round trip."""

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resbench import config
from resbench.config import ConfigError, RunConfig


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, "c.yaml", text), overrides)
    return str(err.value)


def test_defaults_are_the_paper_recipe() -> None:
    c = RunConfig()
    assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay, c.optim.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert (c.schedule.iterations, c.schedule.milestones, c.schedule.gamma) == (64_000, (32_000, 48_000), 0.1)
    assert (c.data.pad, c.data.augment, c.data.normalize) == (4, True, "pixel_mean")
    assert (c.model.residual, c.model.shortcut, c.model.width) == (True, "A", 16)


def test_config_is_frozen() -> None:
    with pytest.raises(Exception, match="frozen"):
        RunConfig().optim.lr = 0.2  # type: ignore[misc]


@pytest.mark.parametrize(
    "text,where,what",
    [
        ("model: {depth: 21}", "model.depth", "6n+2"),
        ("model: {depth: 32, block: bottleneck}", "model.depth", "9n+2"),
        ("model: {depth: 2}", "model.depth", "6n+2"),
        ("model: {residual: false, shortcut: B}", "model.shortcut", "plain net"),
        ("model: {shortcut: D}", "model.shortcut", "'A', 'B' or 'C'"),
        ("model: {block: basc}", "model.block", "'basic' or 'bottleneck'"),
        ("model: {width: 0}", "model.width", "at least 1"),
        ("model: {dpeth: 20}", "model.dpeth", "did you mean 'depth'"),
        ("optim: {lr: 0}", "optim.lr", "positive"),
        ("optim: {lr: -0.1}", "optim.lr", "positive"),
        ("optim: {lr: fast}", "optim.lr", "valid number"),
        ("optim: {momentum: -1}", "optim.momentum", "0 or more"),
        ("optim: {batch_size: 0}", "optim.batch_size", "positive"),
        ("schedule: {milestones: [48000, 32000]}", "schedule.milestones", "strictly increasing"),
        ("schedule: {iterations: 1000}", "schedule.milestones", "past the last iteration"),
        ("schedule: {iterations: 0, milestones: []}", "schedule.iterations", "at least 1"),
        ("schedule: {gamma: 2}", "schedule.gamma", "(0, 1]"),
        ("schedule: {warmup: {until_train_error: 800}}", "schedule.warmup.until_train_error", "percentage"),
        ("schedule: {warmup: {lrr: 0.01}}", "schedule.warmup.lrr", "did you mean 'lr'"),
        ("data: {dataset: mnist}", "data.dataset", "'cifar10' or 'cifar100'"),
        ("data: {val_size: -5}", "data.val_size", "0 or more"),
        ("run: {device: tpu}", "run.device", "'auto', 'cuda', 'mps' or 'cpu'"),
        ("run: {precision: fp16}", "run.precision", "'auto', 'fp32' or 'bf16'"),
        ("run: {name: a/b}", "run.name", "plain directory name"),
        ("trainer: {}", "trainer", "allowed: model, data, optim, schedule, run"),
        ("model: 5", "model", "valid dictionary"),
    ],
)
def test_each_rule_names_its_field(tmp_path: Path, text: str, where: str, what: str) -> None:
    msg = problems(tmp_path, text)
    assert f"{where}:" in msg
    assert what in msg


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    msg = problems(tmp_path, "model: {depth: 21, residual: false, shortcut: B}\noptim: {lr: -1}\nextra: 1\n")
    assert "4 problems" in msg
    for where in ("model.depth", "model.shortcut", "optim.lr", "extra"):
        assert f"{where}:" in msg


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    msg = problems(tmp_path, "model:\n  depth: 20\n   block: basic\n")
    assert "c.yaml:3:" in msg and "YAML syntax error" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in problems(tmp_path, "- 1\n- 2\n")


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    c = config.load(write(tmp_path, "empty.yaml", ""))
    assert c.model == RunConfig().model and c.run.name == "empty"


def test_bases_chain_deep_merge_and_replace_lists(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        "optim: {lr: 0.2, momentum: 0.5}\nschedule: {iterations: 100, milestones: [10, 20, 30]}\n",
    )
    write(tmp_path, "b.yaml", "_base_: a.yaml\noptim: {lr: 0.3}\n")
    c = config.load(write(tmp_path, "c.yaml", "_base_: b.yaml\nschedule: {milestones: [50]}\n"))
    assert (c.optim.lr, c.optim.momentum) == (0.3, 0.5)  # dicts merged, nearest file wins
    assert c.schedule.milestones == (50,) and c.schedule.iterations == 100  # lists replaced


def test_base_path_is_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path, "sub/base.yaml", "optim: {lr: 0.3}\n")
    path = write(tmp_path, "sub/c.yaml", "_base_: base.yaml\n")
    monkeypatch.chdir(tmp_path)
    assert config.load("sub/c.yaml").optim.lr == 0.3 and path.exists()


def test_base_cycle_is_detected(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        config.load(tmp_path / "a.yaml")


def test_missing_base(tmp_path: Path) -> None:
    assert "does not exist" in problems(tmp_path, "_base_: nowhere.yaml\n")


def test_overrides_are_yaml_and_validated(tmp_path: Path) -> None:
    c = config.load(
        "resnet20",
        [
            "optim.lr=1e-3",
            "schedule.milestones=[10, 20]",
            "schedule.iterations=30",
            "schedule.warmup={lr: 0.01}",
            "run.name=x",
        ],
    )
    assert c.optim.lr == 1e-3 and c.schedule.milestones == (10, 20) and c.schedule.warmup.lr == 0.01
    with pytest.raises(ConfigError, match=r"optim\.lr: must be positive"):
        config.load("resnet20", ["optim.lr=-1"])
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        config.load("resnet20", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.load("resnet20", ["optim.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        config.load("resnet20", ["optim.lr.x=1"])


def test_plain_twin_differs_in_one_field() -> None:
    plain = yaml.safe_load((config.configs_dir() / "plain56.yaml").read_text())
    resnet = yaml.safe_load((config.configs_dir() / "resnet56.yaml").read_text())
    assert plain["model"].pop("residual") is False
    assert plain == resnet


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    for name in config.bundled_names():
        c = config.load(name, ["run.seed=3"], preset="quick")
        assert config.load(write(tmp_path, "config.yaml", c.to_yaml())) == c


def test_digest_changes_with_the_experiment() -> None:
    a, b = config.load("resnet20"), config.load("resnet20", ["optim.lr=0.05"])
    assert a.digest() != b.digest() and a.digest() == config.load("resnet20").digest()
    assert a.digest(exclude_run=True) == config.load("resnet20", ["run.seed=4"]).digest(exclude_run=True)


@pytest.mark.parametrize("form", ["resnet56", "resnet56.yaml", "configs/resnet56.yaml"])
def test_names_resolve_from_any_directory(form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config.resolve_path(form) == config.configs_dir() / "resnet56.yaml"


def test_a_local_file_wins_over_a_bundled_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "resnet56.yaml", "model: {depth: 8}\n")
    assert config.load("resnet56.yaml").model.depth == 8


def test_unknown_name_suggests_and_lists() -> None:
    with pytest.raises(ConfigError) as err:
        config.resolve_path("resnet57")
    assert "did you mean resnet56" in str(err.value) and "plain110" in str(err.value)


def test_presets() -> None:
    quick = config.load("plain56", preset="quick")
    assert quick.schedule.iterations < 64_000 and quick.run.name == "plain56-quick"
    m = quick.schedule.milestones
    assert (m[0] / quick.schedule.iterations, m[1] / quick.schedule.iterations) == (0.5, 0.75)
    assert config.load("plain56", preset="paper") == config.load("plain56")
    with pytest.raises(ConfigError, match="no preset named 'fast'"):
        config.load("plain56", preset="fast")


def test_bundled_configs() -> None:
    names = set(config.bundled_names())
    assert {f"plain{d}" for d in (20, 32, 44, 56, 110)} <= names
    assert {f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)} <= names
    assert {"resnet20_B", "resnet20_C", "resnet56_B", "resnet56_C", "resnet164", "plain164"} <= names
    assert "cifar_base" not in names
    for depth in (110, 1202):
        assert config.load(f"resnet{depth}").schedule.warmup.lr == 0.01
    assert config.load("resnet56").schedule.warmup is None
    assert config.load("resnet164").model.block == "bottleneck"


# A property: whatever a user writes, loading ends in a RunConfig or a ConfigError, never a traceback.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 100), max_size=4),
)
keys = st.sampled_from(
    [
        "model",
        "data",
        "optim",
        "schedule",
        "run",
        "depth",
        "block",
        "residual",
        "shortcut",
        "lr",
        "milestones",
        "iterations",
        "warmup",
        "seed",
        "name",
        "_base_",
        "x",
    ]
)
trees = st.recursive(scalars, lambda kids: st.dictionaries(keys, kids, max_size=5), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_random_configs_never_raise_anything_else(tree: object, tmp_path: Path) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        assert isinstance(config.load(path), RunConfig)
    except ConfigError as err:
        assert str(err)

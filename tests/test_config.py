"""config.py: defaults, every validation rule, inheritance, overrides, presets, name lookup, round trip."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from resbench import config
from resbench.config import RunConfig
from resbench.errors import ConfigError
from resbench.rundir import run_dir_for


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
        ("model: {width: 0}", "model.width", "must be at least 1, got 0"),
        ("model: {width: .inf}", "model.width", "must be a finite number"),
        ("model: {num_classes: 0}", "model.num_classes", "must be at least 1, got 0"),
        ("model: {num_classes: 100}", "model.num_classes", "100 contradicts data.dataset: cifar10"),
        ("model: {dpeth: 20}", "model.dpeth", "did you mean 'depth'"),
        ("optim: {lr: 0}", "optim.lr", "must be positive, got 0"),
        ("optim: {lr: -0.1}", "optim.lr", "must be positive, got -0.1"),
        ("optim: {lr: .nan}", "optim.lr", "must be a finite number (got nan)"),
        ("optim: {lr: .inf}", "optim.lr", "must be a finite number (got inf)"),
        ("optim: {lr: fast}", "optim.lr", "valid number"),
        ("optim: {momentum: -1}", "optim.momentum", "must be in [0, 1), got -1"),
        ("optim: {momentum: 1}", "optim.momentum", "must be in [0, 1), got 1"),
        ("optim: {momentum: 1.5}", "optim.momentum", "must be in [0, 1), got 1.5"),
        ("optim: {momentum: .nan}", "optim.momentum", "finite number"),
        ("optim: {weight_decay: -0.0001}", "optim.weight_decay", "must be 0 or more, got -0.0001"),
        ("optim: {weight_decay: .inf}", "optim.weight_decay", "finite number"),
        ("optim: {weight_decay: -.inf}", "optim.weight_decay", "finite number"),
        ("optim: {batch_size: 0}", "optim.batch_size", "must be positive, got 0"),
        ("optim: {batch_size: 12.5}", "optim.batch_size", "valid integer"),
        ("schedule: {milestones: [48000, 32000]}", "schedule.milestones", "strictly increasing"),
        ("schedule: {milestones: [0, 100]}", "schedule.milestones", "positive iterations"),
        ("schedule: {iterations: 1000}", "schedule.milestones", "past the last iteration"),
        ("schedule: {iterations: 0, milestones: []}", "schedule.iterations", "must be at least 1, got 0"),
        ("schedule: {iterations: .inf, milestones: []}", "schedule.iterations", "finite number"),
        ("schedule: {gamma: 2}", "schedule.gamma", "must be in (0, 1], got 2"),
        ("schedule: {gamma: 0}", "schedule.gamma", "must be in (0, 1], got 0"),
        ("schedule: {gamma: .nan}", "schedule.gamma", "finite number"),
        ("schedule: {warmup: {lr: 0}}", "schedule.warmup.lr", "must be positive"),
        ("schedule: {warmup: {lr: .inf}}", "schedule.warmup.lr", "finite number"),
        ("schedule: {warmup: {until_train_error: 800}}", "schedule.warmup.until_train_error", "(0, 100]"),
        ("schedule: {warmup: {until_train_error: 0}}", "schedule.warmup.until_train_error", "(0, 100]"),
        ("schedule: {warmup: {until_train_error: .nan}}", "schedule.warmup.until_train_error", "finite"),
        ("schedule: {warmup: {max_iterations: 0}}", "schedule.warmup.max_iterations", "must be positive"),
        ("schedule: {warmup: {lrr: 0.01}}", "schedule.warmup.lrr", "did you mean 'lr'"),
        ("data: {dataset: mnist}", "data.dataset", "'cifar10' or 'cifar100'"),
        ("data: {val_size: -5}", "data.val_size", "must be in [0, 50000), got -5"),
        ("data: {val_size: 50000}", "data.val_size", "must be in [0, 50000), got 50000"),
        ("data: {pad: -1}", "data.pad", "must be 0 or more, got -1"),
        ('data: {root: "a\\0b"}', "data.root", "NUL"),
        ("run: {device: tpu}", "run.device", "'auto', 'cuda', 'mps' or 'cpu'"),
        ("run: {precision: fp16}", "run.precision", "'auto', 'fp32' or 'bf16'"),
        ("run: {name: a/b}", "run.name", "plain directory name"),
        ("run: {device: cpu, cuda_graph: true}", "run.cuda_graph", "a CUDA device, but run.device is cpu"),
        ("run: {cuda_graph: true, device: mps}", "run.cuda_graph", "a CUDA device, but run.device is mps"),
        (f"run: {{name: {'x' * 256}}}", "run.name", "up to 255 bytes"),
        ("run: {seed: -1}", "run.seed", "must be in [0, 4294967296), got -1"),
        ("run: {seed: 4294967296}", "run.seed", "must be in [0, 4294967296)"),
        ("run: {eval_every: -1}", "run.eval_every", "must be 0 or more, got -1"),
        ("run: {checkpoint_every: -1}", "run.checkpoint_every", "must be 0 or more, got -1"),
        ("run: {log_every: -1}", "run.log_every", "must be 0 or more, got -1"),
        ("run: {log_every: .inf}", "run.log_every", "finite number"),
        ("analysis: {every: -1}", "analysis.every", "must be 0 or more, got -1"),
        ("analysis: {images: 0}", "analysis.images", "must be at least 1, got 0"),
        ("trainer: {}", "trainer", "allowed: model, data, optim, schedule, run"),
        ("model: 5", "model", "valid dictionary"),
    ],
)
def test_each_rule_names_its_field(tmp_path: Path, text: str, where: str, what: str) -> None:
    msg = problems(tmp_path, text)
    assert f"{where}:" in msg
    assert what in msg


@pytest.mark.parametrize(
    "text",
    [
        "optim: {momentum: 0, weight_decay: 0}",
        "optim: {momentum: 0.99}",
        "schedule: {gamma: 1, warmup: {until_train_error: 100, max_iterations: 1}}",
        "data: {val_size: 49999, pad: 0}",
        "run: {eval_every: 0, checkpoint_every: 0, log_every: 0, seed: 4294967295}",
        "analysis: {every: 0, images: 1}",
        "model: {num_classes: 10}",
        "model: {num_classes: null}",
    ],
)
def test_edge_values_that_are_allowed(tmp_path: Path, text: str) -> None:
    assert isinstance(config.load(write(tmp_path, "c.yaml", text)), RunConfig)


@pytest.mark.parametrize(
    "iterations,fix", [(2000, "[1000,1500]"), (4000, "[2000,3000]"), (3, "[1,2]"), (2, "[1]"), (1, "[]")]
)
def test_milestones_past_the_end_give_the_paste_ready_fix(iterations: int, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load("resnet20", [f"schedule.iterations={iterations}"])
    assert f"--set 'schedule.milestones={fix}'" in str(err.value) and "--preset quick" in str(err.value)
    fixed = config.load("resnet20", [f"schedule.iterations={iterations}", f"schedule.milestones={fix}"])
    assert list(fixed.schedule.milestones) == yaml.safe_load(fix)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    msg = problems(tmp_path, "model: {depth: 21, residual: false, shortcut: B}\noptim: {lr: -1}\nextra: 1\n")
    assert "4 problems" in msg
    for where in ("model.depth", "model.shortcut", "optim.lr", "extra"):
        assert f"{where}:" in msg


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    msg = problems(tmp_path, "model:\n  depth: 20\n   block: basic\n")
    assert "c.yaml:3:" in msg and "YAML syntax error" in msg


@pytest.mark.parametrize(
    "content,what",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8"),
        ("model: {depth: 20}  # caf\xe9\n".encode("latin-1"), "not UTF-8"),
        (b"model: {depth: 20}\x00\n", "YAML error"),
        (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
    ],
)
@pytest.mark.parametrize("as_base", [False, True])
def test_a_file_that_is_not_yaml_text_is_named(
    tmp_path: Path, content: bytes, what: str, as_base: bool
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    path = write(tmp_path, "c.yaml", "_base_: bad.yaml\n") if as_base else bad
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(bad) in str(err.value) and what in str(err.value)


def test_a_binary_config_exits_2_without_a_traceback(cli, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_bytes(bytes(range(256)))
    result = cli("show", tmp_path / "c.yaml")
    assert result.exit_code == 2 and "is not a YAML text file" in result.stderr
    assert "Traceback" not in result.output and "UnicodeDecodeError" not in result.output


# 9 levels of 9 aliases: 387 million strings once expanded, from a --set of about 340 bytes
_BOMB = (
    "[&a [lol,lol,lol,lol,lol,lol,lol,lol,lol],"
    + ",".join(f"&{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    + "]"
)


@pytest.mark.parametrize(
    "key", ["model.depth", "run.name", "schedule.milestones", "model", "run", "optim.lr.x"]
)
def test_a_yaml_alias_bomb_is_refused_in_a_short_message(key: str) -> None:
    assert len(f"{key}={_BOMB}") < 360
    with pytest.raises(ConfigError) as err:
        config.load("resnet20", [f"{key}={_BOMB}"])
    assert len(str(err.value)) < 3000 and key.split(".")[0] in str(err.value)


def test_names_the_file_system_cannot_look_up_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="File name too long"):
        config.load("x" * 300)
    with pytest.raises(ConfigError, match=r"_base_ .*File name too long"):
        config.load(write(tmp_path, "c.yaml", f"_base_: {'x' * 300}.yaml\n"))
    with pytest.raises(ConfigError, match="cannot look up"):
        config.load("~no-such-user-here/c.yaml")


def test_a_long_unknown_key_is_shortened_when_echoed(tmp_path: Path) -> None:
    assert len(problems(tmp_path, f"model: {{{'k' * 100_000}: 1}}\n")) < 1000


def test_a_long_override_is_shortened_when_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        config.load("resnet20", ["x" * 100_000])
    assert "KEY=VALUE" in str(err.value) and len(str(err.value)) < 400


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
    for name in ("fast", "../cifar_base", "quick.yaml", "x" * 300):
        with pytest.raises(ConfigError, match="no preset named"):
            config.load("plain56", preset=name)


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


# --------------------------------------------------------------------------------------------
# model.num_classes follows data.dataset


def test_num_classes_follows_the_dataset(tmp_path: Path) -> None:
    assert config.load("resnet20").model.num_classes == 10
    c = config.load("resnet20", ["data.dataset=cifar100"])
    assert c.model.num_classes == 100 and "num_classes: 100" in c.to_yaml()
    assert config.load(write(tmp_path, "config.yaml", c.to_yaml())) == c  # a run dir's config.yaml
    assert config.load("resnet20", ["data.dataset=cifar100", "model.num_classes=100"]) == c
    assert config.load("resnet20", ["data.dataset=cifar100", "model.num_classes=null"]) == c
    assert RunConfig(data=config.DataConfig(dataset="cifar100")).model.num_classes == 100
    explicit = config.ModelConfig(num_classes=100)
    assert RunConfig(model=explicit, data=config.DataConfig(dataset="cifar100")).model == explicit


def test_a_config_yaml_of_an_existing_cifar10_run_loads_equal(tmp_path: Path) -> None:
    old = yaml.safe_load(config.load("resnet20").to_yaml())
    assert old["model"]["num_classes"] == 10  # what every run directory written so far holds
    assert config.load(write(tmp_path, "config.yaml", yaml.safe_dump(old))) == config.load("resnet20")


@pytest.mark.parametrize("dataset,num_classes", [("cifar100", 10), ("cifar10", 100)])
def test_num_classes_contradicting_the_dataset_is_a_config_error(dataset: str, num_classes: int) -> None:
    with pytest.raises(ConfigError) as err:
        config.load("resnet20", [f"data.dataset={dataset}", f"model.num_classes={num_classes}"])
    classes = config.NUM_CLASSES[dataset]
    assert f"model.num_classes: {num_classes} contradicts data.dataset: {dataset}" in str(err.value)
    assert "remove model.num_classes" in str(err.value) and f"set it to {classes}" in str(err.value)
    with pytest.raises(ValidationError, match="contradicts"):
        RunConfig(model=config.ModelConfig(num_classes=num_classes), data=config.DataConfig(dataset=dataset))


def test_show_prints_100_outputs_for_cifar100(cli) -> None:
    result = cli("show", "resnet20", "--set", "data.dataset=cifar100")
    assert result.exit_code == 0, result.output
    assert "num_classes: 100" in result.stdout and "(N, 100)" in result.stdout


def test_a_cifar100_run_end_to_end(cli, tmp_path: Path) -> None:
    from data_fixtures import tiny_set, write_pickles

    from resbench import checkpoint
    from resbench.models import build_model

    write_pickles(tmp_path / "data", tiny_set("cifar100", train_per_class=1, test_per_class=1))
    sets = ["data.dataset=cifar100", f"data.root={tmp_path / 'data'}", "model.depth=8", "model.width=4"]
    sets += ["optim.batch_size=16", "schedule.iterations=3", "schedule.milestones=[]", "run.log_every=1"]
    args = [a for s in sets for a in ("--set", s)]
    result = cli("train", "-c", "resnet20", *args, "--device", "cpu", "--runs-dir", tmp_path / "runs", "-q")
    assert result.exit_code == 0, result.output
    run = run_dir_for(config.load("resnet20", sets), tmp_path / "runs")
    cfg = config.load(run / "config.yaml")
    assert cfg.data.dataset == "cifar100" and cfg.model.num_classes == 100
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 3 and 0 <= summary["test_error"] <= 100
    model = build_model(cfg.model)
    model.load_state_dict(checkpoint.load(run / "last.pt")["model"])
    assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize(
    "override,where",
    [
        ("optim.lr=true", "optim.lr"),
        ("optim.batch_size=true", "optim.batch_size"),
        ("optim.momentum=false", "optim.momentum"),
        ("model.depth=true", "model.depth"),
        ("run.seed=true", "run.seed"),
        ("schedule.iterations=true", "schedule.iterations"),
    ],
)
def test_a_boolean_is_not_a_number(override: str, where: str) -> None:
    """pydantic's lax mode read `true` as 1, so `optim.lr=true` trained at lr 1.0 without a word."""
    with pytest.raises(ConfigError, match=rf"{re.escape(where)}: must be a number, got (true|false)"):
        config.load("resnet20", [override])

"""Experiment configs: typed, frozen sections with the paper's defaults, and YAML loading.

`load(name_or_path, overrides, preset)` is the one way from YAML to a `RunConfig`:

    file (+ its `_base_` chain) -> preset overlay -> `--set a.b=value` overrides -> validation

Validation is strict (unknown keys, wrong types, cross-field rules) and reports every problem at
once as `ConfigError`, each with its dotted path. The resolved config dumps to YAML that loads back
to an equal object, so a run directory's `config.yaml` reproduces the run.

Defaults are He et al. 2015, §4.2 (CIFAR-10). No model or training code here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator


class ResbenchError(Exception):
    """A problem the user can fix. The CLI prints it without a traceback and exits with `exit_code`."""

    exit_code = 1
    label = "error"


class ConfigError(ResbenchError):
    """A config that cannot be read or is not valid: bad parameter, exit code 2."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
# Sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """The network. A plain net and its residual twin differ in `residual` alone."""

    block: Literal["basic", "bottleneck"] = "basic"  # bottleneck: the ImageNet block (§4.1), 9n+2 on CIFAR
    depth: int = 20  # weighted layers: 6n+2 (basic) or 9n+2 (bottleneck), §4.2
    residual: bool = True  # false: the plain twin, the very same layers without shortcuts
    # null means the paper's CIFAR choice: A for residual nets (§4.2), none for plain nets
    shortcut: Literal["A", "B", "C"] | None = Field(default=None, validate_default=True)
    width: int = 16  # planes of stage 1; stages 2 and 3 double it (16/32/64, §4.2)
    num_classes: int = 10
    init_mode: Literal["fan_out", "fan_in"] = "fan_out"  # He init [13]; fan_out as torchvision
    zero_init_residual: bool = False  # zero the last BN of each residual branch; not in the paper

    @field_validator("depth")
    @classmethod
    def _depth_fits_block(cls, depth: int, info: ValidationInfo) -> int:
        block = info.data.get("block")
        if block is None:  # block itself was invalid; that error is reported already
            return depth
        per_block = 2 if block == "basic" else 3
        if depth < 2 + 3 * per_block or (depth - 2) % (3 * per_block):
            allowed = ", ".join(str(3 * per_block * n + 2) for n in (1, 2, 3, 5, 9, 18))
            raise ValueError(
                f"{depth} is not {3 * per_block}n+2 for {block} blocks (allowed: {allowed}, ...)"
            )
        return depth

    @field_validator("shortcut")
    @classmethod
    def _shortcut_needs_residual(cls, shortcut: str | None, info: ValidationInfo) -> str | None:
        residual = info.data.get("residual")
        if residual is False and shortcut is not None:
            raise ValueError(
                f"a plain net (model.residual: false) has no shortcut, got {shortcut!r}; "
                "remove model.shortcut or set model.residual: true"
            )
        if residual and shortcut is None:
            return "A"  # §4.2: option A on CIFAR, so plain and residual twins have equal parameters
        return shortcut

    @field_validator("width", "num_classes")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @property
    def n(self) -> int:
        """Blocks per stage."""
        return (self.depth - 2) // (6 if self.block == "basic" else 9)


class DataConfig(_Section):
    """Where the images come from and how they are prepared (§4.2)."""

    dataset: Literal["cifar10", "cifar100"] = "cifar10"
    root: str = "data"  # searched for cifar-10-batches-py/, the official .tar.gz or train/ + test/
    download: bool = False  # fetch the official archive with torchvision's downloader
    val_size: int = 0  # 5000 gives the paper's 45k/5k split for choosing a schedule (§4.2)
    normalize: Literal["pixel_mean", "channel"] = "pixel_mean"  # §4.2 subtracts the per-pixel mean
    augment: bool = True  # pad, random 32x32 crop and horizontal flip (§4.2)
    pad: int = 4  # pixels on each side before the random crop (§4.2)

    @field_validator("val_size", "pad")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be 0 or more, got {value}")
        return value


class OptimConfig(_Section):
    """SGD as in §4.2."""

    lr: float = 0.1  # divided by schedule.gamma^-1 at each milestone (§4.2)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    weight_decay_on: Literal["all", "weights"] = "all"  # weights: conv/linear weights only, not BN or bias
    batch_size: int = 128  # §4.2, split over two GPUs in the paper

    @field_validator("lr", "batch_size")
    @classmethod
    def _strictly_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be positive, got {value}")
        return value

    @field_validator("momentum", "weight_decay")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be 0 or more, got {value}")
        return value


class WarmupConfig(_Section):
    """§4.2 for ResNet-110: lr 0.01 until the training error is below 80%, then the base lr."""

    lr: float = 0.01
    until_train_error: float = 80.0  # %, of the running training error (errors are % everywhere)
    max_iterations: int = 1000  # the paper saw about 400; stop warming up here regardless

    @field_validator("lr", "max_iterations")
    @classmethod
    def _strictly_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be positive, got {value}")
        return value

    @field_validator("until_train_error")
    @classmethod
    def _percent(cls, value: float) -> float:
        if not 0 < value <= 100:
            raise ValueError(f"must be a percentage in (0, 100], got {value}")
        return value


class ScheduleConfig(_Section):
    """Counted in iterations, as in the paper (§4.2)."""

    iterations: int = 64_000  # 164 epochs of 50k images at batch 128
    milestones: tuple[int, ...] = Field(default=(32_000, 48_000), validate_default=True)  # lr x gamma at each
    gamma: float = 0.1
    warmup: WarmupConfig | None = None  # the ResNet-110 rule; null: no warm-up

    @field_validator("iterations")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @field_validator("milestones")
    @classmethod
    def _ordered_within_run(cls, milestones: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        if any(b <= a for a, b in pairwise(milestones)):
            raise ValueError(f"must be strictly increasing, got {list(milestones)}")
        if milestones and milestones[0] < 1:
            raise ValueError(f"must be positive iterations, got {list(milestones)}")
        iterations = info.data.get("iterations")
        if iterations is not None and milestones and milestones[-1] >= iterations:
            raise ValueError(
                f"{list(milestones)} reaches past the last iteration ({iterations}); "
                "every milestone must be below schedule.iterations"
            )
        return milestones

    @field_validator("gamma")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value


class RunSettings(_Section):
    """How and where one run executes; none of this changes the experiment's mathematics."""

    name: str = ""  # the run directory's name; empty: the config file's name (+ preset)
    seed: int = 0
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"  # auto: cuda, then mps, then cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the hardware runs it natively
    compile: bool = False  # torch.compile the model (helps on CUDA; slower on small CPUs)
    sync_bn: bool = False  # under torchrun: BN statistics over all GPUs; off as in the paper (per device)
    eval_every: int = 0  # iterations between evaluations; 0: once per epoch
    checkpoint_every: int = 1000  # iterations between checkpoints (and at the end)
    log_every: int = 100  # iterations per running train error/loss point

    @field_validator("name")
    @classmethod
    def _path_safe(cls, name: str) -> str:
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"must be a plain directory name, got {name!r}")
        return name

    @field_validator("eval_every", "checkpoint_every", "log_every")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be 0 or more, got {value}")
        return value


class AnalysisConfig(_Section):
    """Layer responses (§4.2, Figure 7) and gradient norms; they only read the model."""

    every: int = 0  # iterations between response and gradient-norm logs to TensorBoard; 0: off
    images: int = 1000  # fixed, seeded test images the responses are measured on
    per_channel: bool = False  # also take each layer's std per channel, then the mean

    @field_validator("every")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be 0 or more, got {value}")
        return value

    @field_validator("images")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value


class RunConfig(_Section):
    """One experiment: everything that decides a run, resolved and frozen."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    run: RunSettings = RunSettings()
    analysis: AnalysisConfig = AnalysisConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self, exclude_run: bool = False) -> str:
        """A short hash of the resolved config; `exclude_run` keeps only what decides the numbers."""
        d = self.to_dict()
        if exclude_run:
            d.pop("run")
            d.pop("analysis")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}: the dotted keys used by --set, errors and hparams."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def parse_seeds(seeds: str) -> list[int]:
    """`3` means seeds 0, 1, 2; `0,4,7` means those seeds."""
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected a count (3) or a list (0,1,2)") from None
    if "," not in seeds and len(values) == 1:
        if values[0] < 1:
            raise ConfigError(f"--seeds {seeds!r}: a count must be at least 1")
        return list(range(values[0]))
    return values


# --------------------------------------------------------------------------------------------
# Finding configs


def configs_dir() -> Path:
    """The bundled configs: packaged inside the wheel, or `configs/` beside the package in a checkout."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "configs"


def bundled_names() -> list[str]:
    """Names of the bundled experiment configs (bases like `cifar_base.yaml` are not experiments)."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml") if not p.stem.endswith("_base"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "presets").glob("*.yaml"))


def resolve_path(name_or_path: str | Path) -> Path:
    """A path that exists, else a bundled config by name (`resnet56`, `resnet56.yaml`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "config.yaml").is_file():  # a run directory
            return path / "config.yaml"
        raise ConfigError(f"{path} is a directory with no config.yaml in it")
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    bundled = configs_dir() / f"{stem}.yaml"
    if bundled.is_file() and len(path.parts) <= 2:  # `resnet56`, `resnet56.yaml`, `configs/resnet56.yaml`
        return bundled
    names = bundled_names()
    close = difflib.get_close_matches(stem, names, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(
        f"no config named {str(name_or_path)!r}{hint}\n"
        f"It is not a file here, nor a bundled config. Bundled configs: {', '.join(names)}"
    )


# --------------------------------------------------------------------------------------------
# Loading


def load(
    name_or_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    preset: str | None = None,
) -> RunConfig:
    """YAML file (with its `_base_` chain) + preset + `--set` overrides -> validated `RunConfig`."""
    path = resolve_path(name_or_path)
    raw = _read_with_bases(path, chain=())
    if preset:
        raw = _merge(raw, _read_preset(preset))
    for override in overrides:
        _apply_override(raw, override)
    if not isinstance(raw.get("run", {}), dict):
        raise ConfigError(f"{path}: run: must be a mapping, got {raw['run']!r}")
    run = raw.setdefault("run", {})
    if not run.get("name"):
        suffix = f"-{preset}" if preset and preset != "paper" else ""
        run["name"] = path.stem + suffix
    return validate(raw, source=str(path))


def validate(raw: Any, source: str = "config") -> RunConfig:
    """A plain dict -> `RunConfig`, or a `ConfigError` that lists every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
        raise ConfigError(
            f"{source}: {len(problems)} problem{'s' * (len(problems) > 1)}:\n  " + "\n  ".join(problems)
        ) from None


def _describe(error: Any) -> str:
    loc = tuple(str(p) for p in error["loc"])
    where = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{where}: unknown key; {hint}allowed: {', '.join(allowed)}"
    msg = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] != "value_error" and not isinstance(value, dict):
        msg += f" (got {value!r})"
    return f"{where}: {msg}"


def _allowed_keys(loc: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for key in loc:
        annotation = model.model_fields[key].annotation
        model = next(
            a
            for a in (annotation, *getattr(annotation, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        )
    return list(model.model_fields)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML error: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"{chain[0]}: _base_ chain loops back on itself: {cycle}")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: _base_ must be a file name, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: _base_ file {base_path} does not exist")
    return _merge(_read_with_bases(base_path, (*chain, path)), data)


def _read_preset(preset: str) -> dict[str, Any]:
    path = configs_dir() / "presets" / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset named {preset!r}; presets: {', '.join(preset_names())}")
    return _read_yaml(path)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge dicts; lists and scalars in `top` replace those in `base`."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """`a.b=value` sets raw['a']['b'], the value parsed as YAML (`1e-3`, `[1, 2]`, `null`)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {override!r}: {text!r} is not a valid YAML value") from None
    *parents, leaf = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value

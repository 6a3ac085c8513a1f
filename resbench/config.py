"""Experiment configs: typed, frozen sections with the paper's defaults, and YAML loading.

`load(name_or_path, overrides, preset)` is the one way from YAML to a `RunConfig`:

    file (+ its `_base_` chain) -> preset overlay -> `--set a.b=value` overrides -> validation

Validation is strict (unknown keys, wrong types, cross-field rules) and reports every problem at
once as `ConfigError`, each with its dotted path. The resolved config dumps to YAML that loads back
to an equal object, so a run directory's `config.yaml` reproduces the run.

Defaults are He et al. 2015, §4.2 (CIFAR-10). No model or training code here.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import reprlib
import urllib.parse
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from resbench.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Sections

# Bounds are pydantic constraints; `_describe` turns a violated one into "must be positive, got -1".
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
AtLeast1 = Annotated[int, Field(ge=1)]
Interval = Annotated[int, Field(ge=0)]  # iterations between two events; 0 has a documented meaning
Device = Literal["auto", "cuda", "mps", "cpu"]  # run.device and the commands' --device
Dataset = Literal["cifar10", "cifar100"]  # data.dataset and `data prepare --dataset`
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}  # data.dataset -> model.num_classes
TRAIN_IMAGES = 50_000  # CIFAR-10 and CIFAR-100 alike; data.val_size must leave some of them


class _Section(BaseModel):
    # allow_inf_nan: a `.nan` lr would only surface later as a "divergence"
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic's lax mode reads YAML `true` as 1: `optim.lr: true` would train at lr 1.0."""
        if isinstance(value, bool) and cls.model_fields[info.field_name or ""].annotation in (int, float):
            raise ValueError(f"must be a number, got {str(value).lower()}")
        return value


class ModelConfig(_Section):
    """The network. A plain net and its residual twin differ in `residual` alone."""

    block: Literal["basic", "bottleneck"] = "basic"  # bottleneck: the ImageNet block (§4.1), 9n+2 on CIFAR
    depth: int = 20  # weighted layers: 6n+2 (basic) or 9n+2 (bottleneck), §4.2
    residual: bool = True  # false: the plain twin, the very same layers without shortcuts
    # null means the paper's CIFAR choice: A for residual nets (§4.2), none for plain nets
    shortcut: Literal["A", "B", "C"] | None = Field(default=None, validate_default=True)
    width: AtLeast1 = 16  # planes of stage 1; stages 2 and 3 double it (16/32/64, §4.2)
    num_classes: AtLeast1 = 10  # in a RunConfig: follows data.dataset unless set, and must agree with it
    init_mode: Literal["fan_out", "fan_in"] = "fan_out"  # He init [13]; fan_out as torchvision
    zero_init_residual: bool = False  # zero the last BN of each residual branch; not in the paper
    # a run directory (RUNS_DIR/NAME/seedK) of the same net whose final weights (last.pt) start this
    # run, with a fresh optimiser and the usual schedule: §1's "solution by construction", trained
    # on from `resbench deepen`'s output; null: the init above
    init_from: str | None = None

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

    @property
    def n(self) -> int:
        """Blocks per stage."""
        return (self.depth - 2) // (6 if self.block == "basic" else 9)


class DataConfig(_Section):
    """Where the images come from and how they are prepared (§4.2)."""

    dataset: Dataset = "cifar10"
    root: str = "data"  # searched for cifar-10-batches-py/, the official .tar.gz or train/ + test/
    download: bool = False  # fetch the official archive with torchvision's downloader
    # 5000 gives the paper's 45k/5k split for choosing a schedule (§4.2)
    val_size: int = Field(default=0, ge=0, lt=TRAIN_IMAGES)
    normalize: Literal["pixel_mean", "channel"] = "pixel_mean"  # §4.2 subtracts the per-pixel mean
    augment: bool = True  # pad, random 32x32 crop and horizontal flip (§4.2)
    pad: Interval = 4  # pixels on each side before the random crop (§4.2)

    @field_validator("root")
    @classmethod
    def _no_nul(cls, root: str) -> str:
        if "\0" in root:
            raise ValueError("must be a path without NUL bytes")
        return root


class OptimConfig(_Section):
    """SGD as in §4.2."""

    lr: Positive = 0.1  # multiplied by schedule.gamma at each milestone (§4.2)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # 1 or more makes SGD's velocity grow without bound
    weight_decay: float = Field(default=1e-4, ge=0)
    nesterov: bool = False
    weight_decay_on: Literal["all", "weights"] = "all"  # weights: conv/linear weights only, not BN or bias
    batch_size: PositiveInt = 128  # §4.2, split over two GPUs in the paper


class WarmupConfig(_Section):
    """§4.2 for ResNet-110: lr 0.01 until the training error is below 80%, then the base lr."""

    lr: Positive = 0.01
    # %, of the running training error (errors are % everywhere)
    until_train_error: float = Field(default=80.0, gt=0, le=100)
    max_iterations: PositiveInt = 1000  # the paper saw about 400; stop warming up here regardless


class ScheduleConfig(_Section):
    """Counted in iterations, as in the paper (§4.2)."""

    iterations: AtLeast1 = 64_000  # 164 epochs of 50k images at batch 128
    milestones: tuple[int, ...] = Field(default=(32_000, 48_000), validate_default=True)  # lr x gamma at each
    gamma: float = Field(default=0.1, gt=0, le=1)
    warmup: WarmupConfig | None = None  # the ResNet-110 rule; null: no warm-up

    @field_validator("milestones", mode="before")
    @classmethod
    def _a_list(cls, milestones: Any) -> Any:
        """`--set schedule.milestones=1000,1500` reads as the text '1000,1500': name the form instead of
        pydantic's "valid tuple"."""
        if isinstance(milestones, str | int | float) and not isinstance(milestones, bool):
            numbers = _cut(str(milestones).replace(" ", "").strip("[]()") or "1000,1500", 80)
            raise ValueError(
                f"must be a list of iterations, got {clip(milestones)}: "
                f"--set 'schedule.milestones=[{numbers}]' (quoted for the shell), or [{numbers}] in YAML"
            )
        return milestones

    @field_validator("milestones")
    @classmethod
    def _ordered_within_run(cls, milestones: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        if any(b <= a for a, b in pairwise(milestones)):
            raise ValueError(f"must be strictly increasing, got {list(milestones)}")
        if milestones and milestones[0] < 1:
            raise ValueError(f"must be positive iterations, got {list(milestones)}")
        iterations = info.data.get("iterations")
        if iterations is not None and milestones and milestones[-1] >= iterations:
            # the paper's drops at 32k and 48k of 64k: 50% and 75% of any length
            scaled = sorted({m for m in (iterations // 2, iterations * 3 // 4) if m >= 1})
            raise ValueError(
                f"{list(milestones)} reaches past the last iteration ({iterations}); every milestone "
                f"must be below schedule.iterations. For the paper's lr drops at 50% and 75% of the run: "
                f"--set 'schedule.milestones=[{','.join(map(str, scaled))}]', "
                "or --preset quick for the CPU-sized 2,000-iteration schedule"
            )
        return milestones


class RunSettings(_Section):
    """How and where one run executes; none of this changes the experiment's mathematics."""

    name: str = ""  # the run directory's name; empty: the config file's name (+ preset)
    # set by `load`, never by hand: the overrides that differ from the config file (+ preset), as
    # `key=value`, sorted; they name the run's directory below `name` (rundir.run_dir_for)
    overrides: tuple[str, ...] = ()
    seed: int = Field(default=0, ge=0, lt=2**32)  # init, batch order and augmentation; the run dir's seed<k>
    device: Device = "auto"  # auto: cuda, then mps, then cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the hardware runs it natively
    compile: bool = False  # torch.compile the model (helps on CUDA; slower on small CPUs)
    cuda_graph: bool = False  # replay each training step as one captured CUDA graph (one CUDA device)
    deterministic: bool = False  # deterministic kernels, no cudnn.benchmark: exact resume on GPU, slower
    sync_bn: bool = False  # under torchrun: BN statistics over all GPUs; off as in the paper (per device)
    eval_every: Interval = 0  # iterations between evaluations; 0: once per epoch
    checkpoint_every: Interval = 1000  # iterations between checkpoints (and at the end); 0: at the end only
    log_every: Interval = 100  # iterations per running train error/loss point; 0: at each evaluation

    @field_validator("cuda_graph")
    @classmethod
    def _cuda_graph_needs_cuda(cls, cuda_graph: bool, info: ValidationInfo) -> bool:
        device = info.data.get("device")  # validated before: it is declared first
        if cuda_graph and device in ("cpu", "mps"):
            raise ValueError(
                f"captures CUDA graphs and needs a CUDA device, but run.device is {device}; set "
                "run.device to cuda (or auto on a GPU machine), or run.cuda_graph to false"
            )
        return cuda_graph

    @field_validator("overrides")
    @classmethod
    def _entries_path_safe(cls, overrides: tuple[str, ...]) -> tuple[str, ...]:
        """They name a directory: a `/` or `..` written into a config.yaml must not lead out of it."""
        if bad := [e for e in overrides if "=" not in e or any(c in e for c in "/\\\0")]:
            raise ValueError(f"must be key=value entries without '/' (set by resbench), got {clip(bad[0])}")
        return overrides

    @field_validator("name")
    @classmethod
    def _path_safe(cls, name: str) -> str:
        bad = any(c in name for c in "/\\\0") or name in (".", "..") or len(name.encode()) > 255
        if bad:
            raise ValueError(f"must be a plain directory name (up to 255 bytes), got {clip(name)}")
        return name


class AnalysisConfig(_Section):
    """Layer responses (§4.2, Figure 7) and gradient norms; they only read the model."""

    every: Interval = 0  # iterations between response and gradient-norm logs to TensorBoard; 0: off
    images: AtLeast1 = 1000  # fixed, seeded test images the responses are measured on
    per_channel: bool = False  # also take each layer's std per channel, then the mean


class RunConfig(_Section):
    """One experiment: everything that decides a run, resolved and frozen."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    run: RunSettings = RunSettings()
    analysis: AnalysisConfig = AnalysisConfig()

    @model_validator(mode="before")
    @classmethod
    def _num_classes_follow_dataset(cls, raw: Any) -> Any:
        """An unset (or null) model.num_classes becomes the class count of data.dataset."""
        if not isinstance(raw, dict):
            return raw
        data, model = raw.get("data") or {}, raw.get("model", {})
        dataset = data.get("dataset") if isinstance(data, dict) else getattr(data, "dataset", None)
        classes = NUM_CLASSES.get(dataset or "cifar10") if isinstance(dataset, str | None) else None
        if classes is None:  # an unknown dataset is reported as data.dataset
            return raw
        if isinstance(model, dict) and model.get("num_classes") is None:
            return {**raw, "model": {**model, "num_classes": classes}}
        if isinstance(model, ModelConfig) and "num_classes" not in model.model_fields_set:
            return {**raw, "model": model.model_copy(update={"num_classes": classes})}
        return raw

    @model_validator(mode="after")
    def _num_classes_match_dataset(self) -> RunConfig:
        classes = NUM_CLASSES[self.data.dataset]
        if self.model.num_classes != classes:
            raise ValueError(
                f"model.num_classes: {self.model.num_classes} contradicts data.dataset: {self.data.dataset}, "
                f"which has {classes} classes; remove model.num_classes (it follows the dataset) "
                f"or set it to {classes}"
            )
        return self

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
    try:
        path = Path(name_or_path).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            # a run directory; rundir.CONFIG spelled out, as rundir imports this module
            if (path / "config.yaml").is_file():
                return path / "config.yaml"
            raise ConfigError(f"{path} is a directory with no config.yaml in it")
    except (OSError, RuntimeError) as err:  # a name too long for the file system, ~unknown-user, ...
        why = getattr(err, "strerror", None) or err
        raise ConfigError(f"cannot look up a config named {clip(str(name_or_path))}: {why}") from None
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    bundled = configs_dir() / f"{stem}.yaml"
    if bundled.is_file() and len(path.parts) <= 2:  # `resnet56`, `resnet56.yaml`, `configs/resnet56.yaml`
        return bundled
    names = bundled_names()
    close = difflib.get_close_matches(stem, names, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(
        f"no config named {clip(str(name_or_path))}{hint}\n"
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
    base = copy.deepcopy(raw)  # what the overrides are measured against: they name the run directory
    for override in overrides:
        _apply_override(raw, override)
    if not isinstance(raw.get("run", {}), dict):
        raise ConfigError(f"{path}: run: must be a mapping, got {clip(raw['run'])}")
    run = raw.setdefault("run", {})
    if not run.get("name"):
        suffix = f"-{preset}" if preset and preset != "paper" else ""
        run["name"] = path.stem + suffix
    keys = {o.partition("=")[0].strip() for o in overrides}
    if "run.overrides" in keys:
        raise ConfigError("--set run.overrides: resbench records it from the other --set values; drop it")
    cfg = validate(raw, source=str(path))
    # run.name given as an override replaces the whole directory name, as it always has
    named = () if "run.name" in keys else named_overrides(base, cfg, keys)
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"overrides": named})})


# --------------------------------------------------------------------------------------------
# Naming a run by its overrides (Hydra's override_dirname): runs/resnet20/optim.lr=0.05/seed0

NAMING_SECTIONS = ("model", "data", "optim", "schedule")  # analysis.* never names a directory
# The run.* keys that change the numbers (fp32 and bf16 train differently; so do per-GPU and synced
# BN statistics); the others (device, seed, compile, eval cadence...) leave them alone.
NAMING_RUN_KEYS = ("run.precision", "run.sync_bn")
# Where the images are, not which ones (the checkpoint's data fingerprint says that): like run.device,
# they name no directory, and a run found under another root is refused as another config, as before.
NOT_NAMING = ("data.root", "data.download")


def names_a_directory(key: str) -> bool:
    """Whether a dotted key's value, overridden, names the run's directory (`optim.lr` and
    `run.precision` do; `run.seed`, `analysis.every` and `data.root` do not)."""
    if key in NAMING_RUN_KEYS:
        return True
    return key.split(".")[0] in NAMING_SECTIONS and not any(_related(key, k) for k in NOT_NAMING)


def named_overrides(base: dict[str, Any], cfg: RunConfig, keys: Iterable[str]) -> tuple[str, ...]:
    """What names `cfg`'s run directory below its name: the values of model, data, optim and
    schedule (`names_a_directory`) that differ from the config file's (`base`: the file and its
    preset, before `--set`), as sorted `key=value` entries, after those the file itself records
    (a run directory's config.yaml). A value that follows from the others is left out
    (`model.num_classes` from `data.dataset`), so that one resolved config always gets one name,
    however it was spelled (`1e-4` or `0.0001`, one `--set` or two); and two different ones never
    share it, since the entries resolve back to the config. `keys` are the overridden keys: they
    name the run where the file is not valid without its overrides (nothing to measure against)."""
    now = _naming_values(cfg)
    try:
        before: dict[str, Any] | None = _naming_values(validate(base))
    except ConfigError:
        before = None
    if before is None:
        changed = {k: _value_at(cfg.to_dict(), k) for k in keys if names_a_directory(k)}
    else:
        changed = {k: v for k, v in now.items() if k not in before or before[k] != v}
        for key in sorted(changed):  # drop what the other values imply, in a fixed order
            rest = {k: v for k, v in changed.items() if k != key}
            if _resolves_to(base, rest, now):
                changed = rest
    recorded = base.get("run", {}).get("overrides") if isinstance(base.get("run"), dict) else None
    entries = {e.partition("=")[0]: e for e in recorded or () if isinstance(e, str)}
    for key in [k for k in entries for c in changed if _related(k, c)]:
        entries.pop(key, None)  # named anew below
    entries |= {k: f"{k}={render_value(v)}" for k, v in changed.items()}
    return tuple(entries[k] for k in sorted(entries))


def _related(a: str, b: str) -> bool:
    """One dotted key, or one inside the other (`schedule.warmup`, `schedule.warmup.lr`)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _naming_values(cfg: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in flatten(cfg.to_dict()).items() if names_a_directory(k)}


def _resolves_to(base: dict[str, Any], values: dict[str, Any], target: dict[str, Any]) -> bool:
    """Whether `base` with `values` set resolves to `target` (naming values)."""
    raw = copy.deepcopy(base)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a section that was null (no warm-up) gets its values
            node = node[part]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    try:
        return _naming_values(validate(raw)) == target
    except ConfigError:
        return False


def render_value(value: Any) -> str:
    """A resolved value as it reads in a directory name: YAML-like scalars (`0`, `0.0001`, `true`,
    `null`), lists as `[1000,1500]`, sections as `{lr:0.01,...}`; in a string, every character but
    letters, digits and `._-+~@` is %-escaped, so no value can hold a `/` or split an entry."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{render_value(v)}" for k, v in sorted(value.items())) + "}"
    return urllib.parse.quote(str(value), safe="._-+~@")


def _value_at(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


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


_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _describe(error: Any) -> str:
    loc = tuple(str(p) for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if not loc:  # a rule across sections: its message names the keys
        return msg
    where = _cut(".".join(loc))
    if error["type"] == "extra_forbidden":
        allowed = list(_section(loc[:-1]).model_fields)
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{where}: unknown key; {hint}allowed: {', '.join(allowed)}"
    value = error.get("input")
    if error["type"] in _BOUNDS:
        return f"{where}: {_allowed_range(_section(loc[:-1]).model_fields[loc[-1]])}, got {clip(value)}"
    if error["type"] == "finite_number":
        msg = "must be a finite number"
    if error["type"] != "value_error" and not isinstance(value, dict):
        msg += f" (got {clip(value)})"
    return f"{where}: {msg}"


def _section(loc: tuple[str, ...]) -> type[BaseModel]:
    """The section model at a dotted location, e.g. ('schedule', 'warmup') -> WarmupConfig."""
    model: type[BaseModel] = RunConfig
    for key in loc:
        annotation = model.model_fields[key].annotation
        model = next(
            a
            for a in (annotation, *getattr(annotation, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        )
    return model


def _allowed_range(field: FieldInfo) -> str:
    """A field's bounds in words: "must be positive", "must be 0 or more", "must be in [0, 1)"."""
    b = {k: getattr(m, k) for m in field.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    low = f"({b['gt']}" if "gt" in b else f"[{b['ge']}" if "ge" in b else "(-inf"
    high = f"{b['lt']})" if "lt" in b else f"{b['le']}]" if "le" in b else ""
    if high:
        return f"must be in {low}, {high}"
    named = {"(0": "must be positive", "[0": "must be 0 or more"}
    return named.get(low, f"must be {'at least' if low[0] == '[' else 'more than'} {low[1:]}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 80, 80


def clip(value: Any) -> str:
    """A bounded repr: a YAML alias bomb echoed in full would exhaust memory."""
    return _cut(_SHORT.repr(value))


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not a YAML text file: byte {err.start} is not UTF-8. Give a config written as "
            "UTF-8 text, e.g. a copy of configs/resnet20.yaml"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML error: {_cut(str(err))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to be a config") from None
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
        raise ConfigError(f"{path}: _base_ must be a file name, got {clip(base)}")
    base_path = path.parent / base
    try:
        found = base_path.is_file()
    except OSError as err:  # e.g. a name too long for the file system
        raise ConfigError(f"{path}: _base_ {clip(base)}: {err.strerror}") from None
    if not found:
        raise ConfigError(f"{path}: _base_ file {base_path} does not exist")
    return _merge(_read_with_bases(base_path, (*chain, path)), data)


def _read_preset(preset: str) -> dict[str, Any]:
    if preset not in preset_names():  # a name, never a path: `../x` must not reach outside presets/
        raise ConfigError(f"no preset named {clip(preset)}; presets: {', '.join(preset_names())}")
    return _read_yaml(configs_dir() / "presets" / f"{preset}.yaml")


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
    what = f"--set {clip(override)}"
    if not sep or not key.strip():
        raise ConfigError(f"{what}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"{what}: the value after '=' is not valid YAML") from None
    *parents, leaf = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value

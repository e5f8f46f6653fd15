"""Run configuration: YAML files validated into a typed, frozen `RunConfig`. Every mistake in
a config file becomes one `ConfigError` naming the file, the key, the value and what is allowed,
so a run fails before any model work."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
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

from kaggle_lib.data_spec import SPEC_FORMS, DataError, parse_spec, spec_list
from kaggle_lib.errors import KaggleLibError, cut, format_validation_error, shorten
from kaggle_lib.hashing import sha256_hex

_DURATION_RE = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


class ConfigError(KaggleLibError, ValueError):
    """A config file (or override) is invalid; the message says where and what is allowed."""

    hint = "Fix the config key named above (the message lists what is allowed), then re-run."


def parse_duration(text: str | int | float | None) -> float | None:
    """'8h30m' / '90s' / 3600 -> seconds."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION_RE.match(text)
    if not match or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration like '8h30m', '45m' or '90s'")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


# Bounds on numbers. They are not tuning advice: they refuse values no run here can mean
# (a typo, a unit slip, an overflow) before any model work, with a message naming the key.
MAX_STEPS = 10**7  # 10M optimizer steps: weeks of TPU time at the fastest step rates here
MAX_BATCH = 65536  # sequences per step; far beyond what 8 x 16 GiB devices hold at length 16
MAX_TOKENS = 32768  # sequence / prompt / generation lengths: Gemma's longest context is 128k,
# but one 32k row of 262k-vocabulary logits is already ~32 GiB: beyond any device here
MAX_ITEMS = 10**9
MAX_SEED = 2**32 - 1  # numpy and JAX PRNG seeds are unsigned 32-bit


class _Section(BaseModel):
    # allow_inf_nan=False: inf/nan in a float field (weight_decay: .inf) is refused by name.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSection(_Section):
    name: str = Field(description="Key of the model registry, e.g. gemma3-270m, gemma2-2b.")
    source: Literal["auto", "random", "hf", "kaggle", "local", "pypi"] = "auto"
    path: str | None = Field(None, description="Directory for source 'local'.")
    revision: str | None = Field(None, description="Overrides the registry's pinned HF revision.")
    repo: str | None = Field(
        None, description="Overrides the registry's HF repo id (org/name) or Kaggle handle "
        "(owner/model/framework/variation/VERSION) for the same architecture.")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gated: bool | None = Field(
        None, description="Whether the hub needs a token; None = the registry's answer.")


class MeshSection(_Section):
    # 0 means "choose from the device count": all devices on fsdp, then tp.
    fsdp: int = Field(0, ge=0, le=MAX_BATCH, description="Devices on the fsdp axis; at most 65536.")
    tp: int = Field(1, ge=1, le=MAX_BATCH, description="Devices on the tensor axis; at most 65536.")


class DataSection(_Section):
    # One data spec, or a list of them: their items concatenated in order (e.g. GSM8K plus a
    # reasoning-gym mix); the manifest records each spec's count (data.train_sources).
    train: str | tuple[str, ...] = "builtin:train"
    eval: str | tuple[str, ...] = "builtin:eval"
    # For a list, train_limit caps each spec (every source keeps a predictable share);
    # eval_limit caps the union (a stratified pick over all of its groups).
    train_limit: int | None = Field(None, ge=1, le=MAX_ITEMS)
    eval_limit: int | None = Field(None, ge=1, le=MAX_ITEMS)
    max_seq_len: int = Field(256, ge=16, le=MAX_TOKENS)
    # Held-out problems for the SFT validation loss (a data spec, e.g. rg:wide_sft@1); items
    # whose prompt is also a training prompt are dropped. None: no validation loss.
    validation: str | None = None
    validation_limit: int = Field(64, ge=1, le=MAX_ITEMS)
    # Row lengths batches are padded to (each is one compilation); None = 1/2, 3/4, 1 x max_seq_len.
    length_buckets: list[Annotated[int, Field(ge=1, le=MAX_TOKENS)]] | None = Field(
        None, min_length=1, max_length=64,
        description="Positive row lengths (<= 32768), at most 64 of them: each is one compilation.")
    # SFT rows of max_seq_len filled with several whole examples each (length_buckets then
    # unused): less padding, more examples per step; each example still sees only itself.
    packing: bool = False

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _check_specs(cls, value: Any, info: ValidationInfo) -> Any:
        # Each spec's form is checked now, before any model loads (files: check_files). A
        # string stays a string, so existing configs dump and hash as before.
        if isinstance(value, str):
            parse_spec(value)
            return value
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"must be one data spec or a non-empty list of them; use: {SPEC_FORMS}")
        for i, spec in enumerate(value):
            where = f"data.{info.field_name}[{i}]"
            if not isinstance(spec, str):
                raise ValueError(f"{where} = {shorten(spec)}: each entry must be a data spec "
                                 f"string; use: {SPEC_FORMS}")
            try:
                parse_spec(spec)
            except DataError as exc:
                raise ValueError(f"{where}: {exc}") from None
        return tuple(value)

    @field_validator("validation")
    @classmethod
    def _check_spec(cls, value: str | None) -> str | None:
        if value is not None:
            parse_spec(value)
        return value

    @model_validator(mode="after")
    def _check_buckets(self) -> DataSection:
        if self.length_buckets and max(self.length_buckets) < self.max_seq_len:
            raise ValueError(
                f"length_buckets {self.length_buckets} must include one >= max_seq_len {self.max_seq_len}")
        return self


class LoraSection(_Section):
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0, le=1e6, description="LoRA scale numerator; finite, <= 1e6.")
    # Regex over module paths, as qwix's LoraProvider expects.
    target_modules: str = ".*q_einsum|.*kv_einsum|.*qkv_einsum|.*attn_vec_einsum|.*gate_proj|.*up_proj|.*down_proj"

    @field_validator("target_modules")
    @classmethod
    def _check_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        return value


class SftSection(_Section):
    mode: Literal["lora", "full"] = "lora"
    max_steps: int = Field(100, ge=1, le=MAX_STEPS, description="At most 10**7.")
    batch_size: int = Field(4, ge=1, le=MAX_BATCH, description="At most 65536.")
    grad_accum_steps: int = Field(1, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(3e-4, gt=0, le=1.0)
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    # cosine: decay to 10% over the run; wsd: peak until the last 20% of steps, then linear
    # decay to 10% (see training.common.lr_schedule).
    lr_schedule: Literal["cosine", "wsd"] = "cosine"
    # Steps between validation losses (with data.validation; also one before the first step).
    validate_every: int = Field(50, ge=1, le=MAX_STEPS)
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    weight_decay: float = Field(0.0, ge=0, le=10.0, description="Finite, 0..10 (AdamW's decay).")
    max_grad_norm: float | None = Field(1.0, gt=0, le=1e6)
    # Tokens per cross-entropy chunk: the loss never holds [B*T, vocab] logits at once.
    loss_chunk_size: int = Field(512, ge=16, le=MAX_BATCH * 16)
    lora: LoraSection = LoraSection()


class GrpoSection(_Section):
    max_steps: int = Field(10, ge=1, le=MAX_STEPS)
    batch_size: int = Field(2, ge=1, le=MAX_BATCH)
    num_generations: int = Field(4, ge=2, le=1024, description="Completions per prompt, <= 1024.")
    num_iterations: int = Field(1, ge=1, le=1000)
    beta: float = Field(0.04, ge=0, le=1000.0)
    epsilon: float = Field(0.2, gt=0, le=10.0)
    learning_rate: float = Field(1e-5, gt=0, le=1.0)
    # Gradient clipping of the actor; before this key GRPO used train.sft.max_grad_norm (1.0).
    max_grad_norm: float | None = Field(1.0, gt=0, le=1e6)
    max_prompt_len: int = Field(256, ge=8, le=MAX_TOKENS)
    max_new_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    temperature: float = Field(0.9, gt=0, le=100.0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    top_k: int | None = Field(None, ge=1, le=2**20, description="<= 2**20 (vocabularies are smaller).")


class TrainSection(_Section):
    stages: list[Literal["sft", "grpo"]] = ["sft"]
    sft: SftSection = SftSection()
    grpo: GrpoSection = GrpoSection()
    checkpoint_every: int = Field(50, ge=1, le=MAX_STEPS)
    keep_checkpoints: int = Field(3, ge=1, le=1000)
    # "auto": continue from this run's checkpoint directory if it has one.
    resume: Literal["auto", "never"] = "auto"
    resume_from: str | None = None
    max_wall_time: str | None = Field(None, description="e.g. '8h30m'; stops cleanly with a checkpoint.")
    log_every: int = Field(1, ge=1, le=MAX_STEPS)
    # Recompute activations in the backward pass (kaggle_lib.compat.remat; Gemma 3 only).
    remat: Literal["none", "decoder", "block"] = "none"

    @field_validator("max_wall_time")
    @classmethod
    def _check_duration(cls, value: str | None) -> str | None:
        parse_duration(value)
        return value

    @field_validator("stages")
    @classmethod
    def _check_stages(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"stages {value} repeat a stage")
        if value == ["grpo", "sft"]:
            raise ValueError("stages must run sft before grpo")
        return value

    @property
    def max_wall_time_s(self) -> float | None:
        return parse_duration(self.max_wall_time)


class SampleSection(_Section):
    prompts: list[str] = []
    max_new_tokens: int = Field(64, ge=1, le=MAX_TOKENS)
    temperature: float = Field(0.0, ge=0, le=100.0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    top_k: int | None = Field(None, ge=1, le=2**20)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class EvalSection(_Section):
    max_new_tokens: int = Field(128, ge=1, le=MAX_TOKENS)
    max_prompt_tokens: int = Field(1024, ge=8, le=MAX_TOKENS, description=(
        "Longest eval prompt, in tokens with bos, as asked (zero-shot or few-shot): longer items "
        "are dropped and counted (console, manifest data.eval_dropped_long, README). With "
        "max_new_tokens it bounds the Generator's buffers, so one huge prompt cannot size them."))
    batch_size: int = Field(8, ge=1, le=MAX_BATCH)
    baseline: bool = True
    # Issue 14: also ask the untrained model with kaggle_lib.data.fewshot's prompt.
    fewshot_baseline: bool = True


class EvidenceSection(_Section):
    root: str = "evidence/runs"
    # Merged HF safetensors + Kaggle-format Orbax checkpoint of the trained model (Gemma 3).
    export: bool = True
    wandb: bool = False
    tensorboard: bool = True


class RunConfig(_Section):
    run_name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    device: Literal["auto", "cpu", "gpu", "tpu"] = "auto"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="0..2**32-1 (PRNG seeds are 32-bit).")
    # Overrides the memory preflight's refusal (with a loud warning).
    force: bool = False
    strict_versions: bool = Field(False, description=(
        "true: a library version other than the tested one (kaggle_lib/compat/"
        "tested_versions.json) stops the run instead of warning, as KAGGLE_LIB_STRICT_VERSIONS=1."))
    model: ModelSection
    mesh: MeshSection = MeshSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    sample: SampleSection = SampleSection()
    eval: EvalSection = EvalSection()
    evidence: EvidenceSection = EvidenceSection()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> RunConfig:
        if self.model.source == "local" and not self.model.path:
            raise ValueError("model.path is required when model.source is 'local'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def hash(self) -> str:
        """sha256 of the resolved config (canonical JSON) without `strict_versions`: that switch
        changes no result, so a run keeps its id (and hash) whichever way it is set."""
        data = {k: v for k, v in self.to_dict().items() if k != "strict_versions"}
        return sha256_hex(json.dumps(data, sort_keys=True, separators=(",", ":")))


def _override_paths(overrides: Mapping[Any, Any], prefix: str = "") -> Iterator[str]:
    """The dotted key of every value `overrides` sets ('train.sft.max_steps' for
    {'train.sft.max_steps': 2} and for {'train': {'sft': {'max_steps': 2}}} alike)."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and value:
            yield from _override_paths(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def apply_overrides(tree: dict[str, Any], overrides: Any) -> dict[str, Any]:
    """Merge overrides into a raw config tree. Keys may be dotted ('train.sft.max_steps')."""
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"overrides must be a mapping of config keys to values, e.g. "
            f"{{'train.sft.max_steps': 10}}; got {type(overrides).__name__} {shorten(overrides)}")
    paths = list(_override_paths(overrides))
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise ConfigError(f"overrides: {', '.join(twice)} given twice (as a dotted key and inside "
                          "a nested mapping); give each key once")
    merged = copy.deepcopy(tree)
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"overrides: key {shorten(key)} must be a non-empty string such as "
                              "'train.sft.max_steps'")
        if isinstance(value, dict) and "." not in key and isinstance(merged.get(key), dict):
            merged[key] = apply_overrides(merged[key], value)
            continue
        *parents, last = key.split(".")
        node = merged
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return merged


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # SafeLoader itself refuses unhashable keys with its own message
        line = key_node.start_mark.line + 1
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {cut(str(key))!r} on line {line} (first given on line "
                f"{first_line[key]}); each key may appear once", key_node.start_mark)
        first_line[key] = line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (configs live in configs/*.yaml)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"config file {path} is not UTF-8 text: byte {exc.start} (line {line}) "
                          f"is {data[exc.start:exc.start + 1]!r}; save the file as UTF-8") from None
    try:
        tree = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {cut(str(exc), 600)}") from None
    tree = {} if tree is None else tree
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(tree).__name__}")
    return tree


def validate_config(tree: dict[str, Any], source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"invalid config {source}:",
                                                  model=RunConfig)) from None


def check_files(config: RunConfig, source: str) -> None:
    """Files a config names must exist before the run starts."""
    problems = []
    for key in ("train", "eval"):
        value = getattr(config.data, key)
        for i, spec in enumerate(spec_list(value)):
            name = f"data.{key}" if isinstance(value, str) else f"data.{key}[{i}]"
            if spec.startswith("jsonl:") and not Path(spec.removeprefix("jsonl:")).is_file():
                problems.append(f"  {name} = {spec!r}: file does not exist")
    if config.model.source == "local" and config.model.path and not Path(config.model.path).is_dir():
        problems.append(f"  model.path = {config.model.path!r}: directory does not exist")
    if config.train.resume_from and not Path(config.train.resume_from).is_dir():
        problems.append(f"  train.resume_from = {config.train.resume_from!r}: directory does not exist")
    if problems:
        raise ConfigError("\n".join([f"invalid config {source}:", *problems]))


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read, merge overrides into, and validate a YAML run config."""
    tree = apply_overrides(read_yaml(path), overrides)
    source = str(path) + (" (with overrides)" if overrides else "")
    config = validate_config(tree, source)
    check_files(config, source)
    return config


# A re-run in a run directory resumes its checkpoints. A change to one of these keys would make
# them another run's (what a checkpoint holds: model, LoRA, mode, optimizer; or which examples
# step k trained on: seed, training data, batch and sequence shape), so it is refused while
# checkpoints exist; every other key may change between attempts (the change is listed).
_SHAPES_CHECKPOINTS = ("model", "seed", "data.train", "data.train_limit", "data.max_seq_len",
                       "data.length_buckets", "data.packing", "train.sft", "train.grpo")
_RESHAPES_NOTHING = ("model.gated", "train.sft.max_steps", "train.sft.validate_every",
                     "train.sft.loss_chunk_size", "train.grpo.max_steps")
_SCHEDULE_NOTE = "also changes the learning-rate schedule, which decays over max_steps"


class ConfigChangeError(KaggleLibError, ValueError):
    """A re-run's config differs from the earlier attempt's in keys that shape its checkpoints."""

    hint = ("Use a new run directory for this config (train.resume_from may start it from the "
            "old checkpoints' weights only if the model and LoRA keys are unchanged), or delete "
            "the run directory's checkpoints/ to start this run over.")


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """One key whose value differs between an earlier attempt's config and this one's."""

    key: str
    old: Any
    new: Any
    resumable: bool  # False: the earlier attempt's checkpoints do not continue under the new value
    note: str = ""

    def describe(self) -> str:
        return f"{self.key}: {shorten(self.old)} -> {shorten(self.new)}" + (
            f" ({self.note})" if self.note else "")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(old: Mapping[str, Any], new: RunConfig) -> list[ConfigChange]:
    """Each key whose value differs between `old` (an earlier attempt's resolved config, e.g. its
    config.yaml) and `new`, in the new config's key order, classed resumable or not. `old` is
    validated first when it still is a valid config, so keys added since default alike."""
    try:
        old = validate_config(dict(old)).to_dict()
    except ConfigError:
        pass  # written by another kaggle_lib version: compared as it is
    before, after = _flatten(old), _flatten(new.to_dict())
    changes = []
    for key in [*after, *(k for k in before if k not in after)]:
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        if key == "train.stages":
            appended = isinstance(was, list) and now[:len(was)] == was
            note = (f"stage(s) {', '.join(now[len(was):])} appended" if appended
                    else "a stage removed or reordered")
            changes.append(ConfigChange(key, was, now, appended, note))
            continue
        changes.append(ConfigChange(
            key, was, now, not _under(key, _SHAPES_CHECKPOINTS) or _under(key, _RESHAPES_NOTHING),
            _SCHEDULE_NOTE if key.endswith(".max_steps") else ""))
    return changes

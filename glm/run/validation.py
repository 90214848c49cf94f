"""Start-up checks: every problem is reported as one ``ConfigError`` naming the config key, before any data
loading or model construction (docs/lightning-hydra-notes.md §P8)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from glm.checkpoint.io import TOKENIZER_DIR
from glm.data.base import check_tokenizer_spec
from glm.data.cloze import ClozeDataModule
from glm.data.lm_eval import LMEvalDataModule
from glm.data.masking import MaskingConfig
from glm.data.pretrain import PretrainDataModule
from glm.data.sampling import EpochIndexSampler
from glm.data.seq2seq import Seq2SeqDataModule
from glm.data.superglue.tasks import get_task
from glm.distributed import check_deepspeed_available
from glm.errors import ConfigError, StrategyUnavailable
from glm.model import GLMConfig
from glm.run.schemas import set_values
from glm.tasks.base import GLMTaskModule, architecture_from_export
from glm.tasks.optim import normalize_optimizer, normalize_scheduler
from glm.utils.allocator import ALLOCATORS

log = logging.getLogger(__name__)
STAGES = ("fit", "validate", "test", "predict")


@dataclass
class Validated:
    """What validating resolved: the pipeline builds the run from these and leaves the config as it is."""

    model: GLMConfig  # the model group's architecture (its vocabulary may still follow the tokenizer)
    built: GLMConfig  # what the run builds: ``model``, or the shape of task.pretrained's export dir
    model_values: dict[str, Any]  # the keys the model group sets (None placeholders dropped)
    objective: MaskingConfig | None
    objective_values: dict[str, Any] | None  # the keys the objective group sets
    tokenizer: Any  # data.tokenizer as the run uses it (task.pretrained's export's tokenizer/); None: no key
    data_takes_objective: bool  # the data module has an ``objective`` argument (pretraining corpora)
    accumulate_grad_batches: int | None
    world_size: int
    pretrained: str | None = None  # task.pretrained

    def built_model(self, model_values: dict[str, Any]) -> GLMConfig:
        """The architecture the task module builds from ``model_values`` (the vocabulary fixed by the
        tokenizer): those, or the shape of task.pretrained's export dir."""
        config = GLMConfig.from_dict(model_values)
        positions = model_values.get("max_sequence_length")
        exported = architecture_from_export(config, self.pretrained, log_changes=False, positions=positions)
        return config if exported is None else GLMConfig.from_dict(exported)

    def data_inputs(self) -> dict[str, Any]:
        """Keyword arguments for the data module: the resolved tokenizer and objective it takes."""
        inputs: dict[str, Any] = {}
        if self.tokenizer is not None:
            inputs["tokenizer"] = self.tokenizer
        if self.objective is not None and self.data_takes_objective:
            inputs["objective"] = self.objective
        return inputs

    def run_config(self, cfg: DictConfig, model_values: dict[str, Any] | None = None) -> DictConfig:
        """The config as the run builds it, plain and resolved: ``model`` (also as ``task.model``) and
        ``objective`` hold the keys their groups set, ``model_values`` (the vocabulary fixed by the tokenizer,
        once known) replacing the model group's; ``data.tokenizer`` is the tokenizer the data is read with.
        Saved as ``<run dir>/config.yaml`` and compared with it when a run resumes."""
        values = OmegaConf.to_container(cfg, resolve=True)
        model = dict(self.model_values if model_values is None else model_values)
        values["model"] = model
        values["task"]["model"] = dict(model)
        if self.objective_values is not None:
            values["objective"] = dict(self.objective_values)
        if self.tokenizer is not None:
            values["data"]["tokenizer"] = self.tokenizer
        return OmegaConf.create(values)


def _container(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _locate(target: str, where: str) -> Any:
    module, _, name = target.rpartition(".")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}._target_: cannot import {target!r} ({err})") from None


def _init_params(cls: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Parameters of ``cls.__init__`` merged along the MRO while ``**kwargs`` forwards them upwards."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    klasses = cls.__mro__ if inspect.isclass(cls) else [cls]
    for klass in klasses:
        fn = klass.__init__ if inspect.isclass(klass) else klass
        if inspect.isclass(klass) and "__init__" not in vars(klass):
            continue
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return params, hints, True
        with contextlib.suppress(Exception):  # unresolvable annotations: check names only
            hints.update({k: v for k, v in typing.get_type_hints(fn).items() if k not in hints})
        var_kw = False
        for name, p in sig.parameters.items():
            if p.kind == p.VAR_KEYWORD:
                var_kw = True
            elif name != "self" and p.kind != p.VAR_POSITIONAL:
                params.setdefault(name, p)
        if not var_kw:
            return params, hints, False
        if not inspect.isclass(klass) or klass.__module__.startswith(("lightning", "torch")):
            return params, hints, True
    return params, hints, True


def _type_ok(value: Any, hint: Any) -> bool:
    """A lenient isinstance for the annotation kinds used in configs (unknown kinds pass)."""
    if hint is Any or value is None and hint is type(None):
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is not None:
        hint = origin
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple, typing.Sequence) or hint is getattr(typing, "Sequence", None):
        return isinstance(value, (list, tuple))
    if hint in (dict, Mapping):
        return isinstance(value, Mapping)
    try:
        if isinstance(hint, type) and hint.__module__ == "builtins":
            return isinstance(value, hint)
    except TypeError:
        pass
    return True


def check_against_signature(node: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    """Every key of an instantiable node must be an argument of its ``_target_`` with a fitting type."""
    if "_target_" not in node:
        raise ConfigError(f"{where}: missing _target_")
    target = _locate(str(node["_target_"]), where)
    params, hints, open_kwargs = _init_params(target)
    for key, value in node.items():
        if key.startswith("_") or key in skip:
            continue
        if key not in params:
            if open_kwargs:
                continue
            raise ConfigError(
                f"{where}.{key}: unknown option for {node['_target_']}; known: {', '.join(sorted(params))}"
            )
        hint = hints.get(key)
        if (
            hint is not None
            and value is not None
            and not isinstance(value, Mapping)
            and not _type_ok(value, hint)
        ):
            raise ConfigError(f"{where}.{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return target


def _devices(trainer: Mapping[str, Any]) -> int:
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and not isinstance(devices, bool):
        return max(1, devices) * int(trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, (list, tuple)):
        return len(devices) * int(trainer.get("num_nodes", 1) or 1)
    if devices == "auto":
        accel = trainer.get("accelerator", "auto")
        if accel in ("gpu", "cuda", "auto"):
            import torch

            return max(1, torch.cuda.device_count()) * int(trainer.get("num_nodes", 1) or 1)
        return 1
    raise ConfigError(f"trainer.devices: expected an int, a list or 'auto', got {devices!r}")


def _strategy_name(trainer: Mapping[str, Any]) -> str:
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", "")).rpartition(".")[2]
    return str(strategy)


def check_multirun_strategy(trainer: Mapping[str, Any], is_multirun: bool) -> None:
    """Refuse ``-m`` with a script-launched multi-process strategy (docs/lightning-hydra-notes.md §P2)."""
    if not is_multirun or _devices(trainer) <= 1:
        return
    name = _strategy_name(trainer)
    if name in ("ddp_spawn", "ddp_notebook"):
        return
    external = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID"))
    if not external:
        raise ConfigError(
            f"trainer.strategy: a Hydra multirun (-m) cannot launch {name or 'a multi-process strategy'} on "
            f"{_devices(trainer)} devices from this script (Lightning re-runs the whole sweep in every child "
            "process). Use one of: (a) one device per job (trainer.devices=1, e.g. with the joblib or submitit "
            "launcher), (b) launch each job with torchrun/SLURM so processes are created externally, or "
            "(c) trainer.strategy=ddp_spawn for small CPU runs."
        )


def check_resume_vs_pretrained(ckpt_path: Any, pretrained: Any) -> None:
    """Resume (``ckpt_path``: the full training state) and init-from-weights (``task.pretrained``) are
    different things; an explicit checkpoint together with ``task.pretrained`` is refused. ``ckpt_path=last``
    or ``auto`` may go with ``task.pretrained``: the run starts from the pretrained weights and, once it
    has a ``last.ckpt``, a restart resumes from that instead (requeue-safe finetuning)."""
    if ckpt_path in (None, "", "last", "auto") or not pretrained:
        return
    raise ConfigError(
        f"task.pretrained ({pretrained}) and ckpt_path ({ckpt_path}) cannot be combined: ckpt_path resumes a "
        "run with its full state (weights, optimizer, schedule, data position), task.pretrained starts a new "
        "run from weights only. Drop one of them (ckpt_path=last resumes this run dir if it has a checkpoint)."
    )


def validate(cfg: DictConfig, is_multirun: bool = False) -> Validated:
    """Check the whole run config; raise :class:`ConfigError` naming the key on the first problem."""
    for key in ("model", "task", "data", "trainer", "paths", "stages", "seed"):
        if key not in cfg:
            raise ConfigError(f"{key}: missing from the config (is the primary config conf/run.yaml?)")
    try:  # missing_keys resolves interpolations: a failing resolver is reported like any interpolation error
        missing = sorted(OmegaConf.missing_keys(cfg))
    except Exception as err:  # noqa: BLE001  (interpolation errors name the key themselves)
        raise ConfigError(f"config interpolation failed: {err}") from None
    if missing:
        raise ConfigError(
            f"{missing[0]}: required value (???) not set"
            + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else "")
        )
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # noqa: BLE001  (interpolation errors name the key themselves)
        raise ConfigError(f"config interpolation failed: {err}") from None

    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError(f"seed: expected a non-negative int, got {cfg.seed!r}")
    if cfg.get("allocator", "system") not in ALLOCATORS:
        raise ConfigError(f"allocator: expected one of {list(ALLOCATORS)}, got {cfg.allocator!r}")
    stages = list(cfg.stages) if isinstance(cfg.stages, ListConfig) else [cfg.stages]
    for stage in stages:
        if stage not in STAGES:
            raise ConfigError(f"stages: unknown stage {stage!r}; allowed: {list(STAGES)}")

    model_values = set_values(cfg.model)
    try:
        model = GLMConfig.from_dict(model_values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from None

    objective = objective_values = None
    if cfg.get("objective") is not None:
        objective_values = set_values(cfg.objective)
        values = dict(objective_values)
        preset = values.pop("preset", None)
        try:
            objective = MaskingConfig.from_name(preset, **values) if preset else MaskingConfig(**values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"objective: {err}") from None

    task = _container(cfg.task)
    task_cls = check_against_signature(task, "task", skip=("model",))
    check_resume_vs_pretrained(cfg.get("ckpt_path"), task.get("pretrained"))
    pretrained = task.get("pretrained")
    if pretrained and not os.path.exists(os.path.expanduser(str(pretrained))):
        raise ConfigError(
            f"task.pretrained: {pretrained} does not exist; give an export dir (`<run dir>/export` of a fit, "
            "or `python -m glm.checkpoint convert|consolidate ... --out DIR`) or a state-dict file"
        )
    if inspect.isclass(task_cls) and issubclass(task_cls, GLMTaskModule):
        try:
            normalize_optimizer(task.get("optimizer"))
            normalize_scheduler(task.get("scheduler"))
        except ValueError as err:
            raise ConfigError(str(err)) from None

    data = _container(cfg.data)
    data_cls = check_against_signature(data, "data", skip=("objective",))
    tokenizer = tokenizer_for_run(data, pretrained)
    check_tokenizer_spec(tokenizer)  # data.tokenizer.train.* refused before any file is read

    trainer = _container(cfg.trainer)
    check_against_signature(trainer, "trainer", skip=("strategy", "callbacks", "logger"))
    if "fit" in stages:
        check_trains_some_steps(trainer)
    demands = position_demands(data_cls, data, task)
    positions = model_values.get("max_sequence_length")
    exported = architecture_from_export(model, pretrained, log_changes=False, positions=positions)
    built = model if exported is None else GLMConfig.from_dict(exported)
    raised = seq2seq_positions(data_cls, demands, built)
    if raised is not None:  # the model the run builds gets the longer tables (an export's are extended)
        model_values = {**model_values, "max_sequence_length": raised}
        model = GLMConfig.from_dict(model_values)
        exported = architecture_from_export(model, pretrained, log_changes=False, positions=raised)
        built = model if exported is None else GLMConfig.from_dict(exported)
    check_positions(demands, built, from_export=exported is not None)
    check_stage_splits(data_cls, data, stages)
    if _strategy_name(trainer) == "deepspeed_strategy":
        try:
            check_deepspeed_available()
        except StrategyUnavailable as err:
            raise ConfigError(f"hardware: {err}") from None
    if trainer.get("accelerator") in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"hardware: trainer.accelerator={trainer['accelerator']} but torch {torch.__version__} sees "
                "no CUDA device; run on CPU with hardware=cpu (or hardware=[cpu,ddp] trainer.devices=2)"
            )
    world = _devices(trainer)
    check_multirun_strategy(trainer, is_multirun)

    accumulate = None
    if "global_batch_size" in data and "micro_batch_size" in data:
        gbs, mbs = data["global_batch_size"], data["micro_batch_size"]
        for key, value in (("global_batch_size", gbs), ("micro_batch_size", mbs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"data.{key}: expected a positive int, got {value!r}")
        if gbs % (mbs * world):
            raise ConfigError(
                f"data.global_batch_size ({gbs}) must be divisible by data.micro_batch_size ({mbs}) "
                f"x world size ({world})"
            )
        accumulate = gbs // (mbs * world)
        if trainer.get("accumulate_grad_batches") not in (None, 1, accumulate):
            raise ConfigError(
                f"trainer.accumulate_grad_batches ({trainer['accumulate_grad_batches']}) conflicts "
                f"with data.global_batch_size / (micro_batch_size x world size) = {accumulate}; "
                "set only the batch sizes"
            )
    for group in ("callbacks", "logger"):
        for name, node in (_container(cfg.get(group)) or {}).items():
            if node is not None:
                check_against_signature(node, f"{group}.{name}")
    return Validated(
        model=model,
        built=built,
        model_values=model_values,
        objective=objective,
        objective_values=objective_values,
        tokenizer=tokenizer,
        data_takes_objective="objective" in _init_params(data_cls)[0],
        accumulate_grad_batches=accumulate,
        world_size=world,
        pretrained=str(pretrained) if pretrained else None,
    )


def tokenizer_for_run(data: Mapping[str, Any], pretrained: Any) -> Any:
    """``data.tokenizer``, or with ``task.pretrained=<export dir>`` the export's ``tokenizer/``: the one its
    weights were trained with. Another tokenizer would feed the model other ids, silently (e.g. the
    ``make demo`` export's sentencepiece vs the cloze configs' BERT default). None without either."""
    configured = data.get("tokenizer")
    if "tokenizer" not in data or not pretrained:
        return configured
    exported = Path(str(pretrained)).expanduser() / TOKENIZER_DIR
    if not exported.is_dir():  # a bare state-dict file, or an export written without its tokenizer
        return configured
    if isinstance(configured, str) and Path(configured).expanduser().resolve() == exported.resolve():
        return configured
    log.info("data.tokenizer: %s (task.pretrained's tokenizer; the config named %s)", exported, configured)
    return str(exported)


def check_tokenizer(tokenizer: Any, model_config: Any) -> None:
    """The tokenizer's padded V must fit the model's embedding table."""
    if tokenizer is not None and int(tokenizer.vocab_size) > int(model_config.vocab_size):
        raise ConfigError(
            f"model.vocab_size: {model_config.vocab_size} is smaller than the tokenizer's padded "
            f"vocabulary ({tokenizer.vocab_size}); set model.vocab_size={tokenizer.vocab_size}"
        )


def vocab_follows_tokenizer(model_values: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """The model group's values with the vocabulary the tokenizer needs, unless ``model.vocab_size`` is set.

    A preset's V is what its released tokenizer needs (glm-large + BERT: 30592), so with the matching
    tokenizer nothing changes; a small preset with another tokenizer (glm-tiny + BERT) grows its table.
    An explicit ``model.vocab_size`` is never changed, and one smaller than the tokenizer's is refused.
    """
    values = dict(model_values)
    if tokenizer is not None and "vocab_size" not in values:
        preset_vocab = GLMConfig.from_dict(values).vocab_size
        if int(tokenizer.vocab_size) != preset_vocab:
            log.info(
                "model.vocab_size: %d (the tokenizer's padded size; preset has %d)",
                tokenizer.vocab_size,
                preset_vocab,
            )
            values["vocab_size"] = int(tokenizer.vocab_size)
    check_tokenizer(tokenizer, GLMConfig.from_dict(values))
    return values


# ---- lengths against the model's position tables ---------------------------------------------------------
@dataclass
class PositionDemand:
    """A length key of the data (or decoding) config and the largest position id it makes the model read."""

    key: str
    value: int
    largest: int  # the largest id in either row of position_ids ([B, 2, L]: positions, block positions)
    what: str  # what takes those ids, for the message


def _int_value(data: Mapping[str, Any], key: str, where: str = "data") -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}.{key}: expected a positive int, got {value!r}")
    return value


def position_demands(data_cls: Any, data: Mapping[str, Any], task: Mapping[str, Any]) -> list[PositionDemand]:
    """The largest position id every length of the datamodule leads to (docs/original-glm.md §3: Part A takes
    positions ``0 .. sep-1``, Part B the position of its mask and block positions ``1 .. k``). The bounds
    are those of the layouts in glm/data (``data.pack`` restarts positions per sample, so it changes none);
    ``tests/run/test_startup_validation.py`` checks each against samples built at that length. A datamodule
    of another class has none here (its own checks apply)."""
    if not inspect.isclass(data_cls):
        return []
    if issubclass(data_cls, PretrainDataModule):
        # raw samples hold <= L tokens: Part A positions stay below sep <= L, a span or generated suffix has
        # at most L - 2 tokens + [sop] -> blocks <= L - 1 (docs/original-glm.md §5.3, §5.5)
        length = _int_value(data, "seq_length")
        return [PositionDemand("data.seq_length", length, length - 1, "pretraining samples")]
    if issubclass(data_cls, ClozeDataModule):
        # Part A + Part B <= L with Part A >= 3 ([CLS], [MASK], eos): positions <= sep - 1, blocks <= L - sep
        length = data.get("seq_length")
        if length is None:
            try:
                length = get_task(str(data.get("task"))).seq_length
            except ValueError as err:
                raise ConfigError(f"data.task: {err}") from None
        length = _int_value({"seq_length": length}, "seq_length")
        return [PositionDemand("data.seq_length", length, length - 2, "cloze sequences")]
    if issubclass(data_cls, Seq2SeqDataModule):
        src, tgt = _int_value(data, "src_seq_length"), _int_value(data, "tgt_seq_length")
        demands = [
            PositionDemand("data.src_seq_length", src, src - 1, "the source (Part A)"),
            PositionDemand("data.tgt_seq_length", tgt, tgt, "the target (Part B block positions)"),
        ]
        new_tokens = (task.get("generation") or {}).get("max_new_tokens")
        if new_tokens is not None:  # decoding feeds the generated tokens at blocks 1 .. max_new_tokens
            new_tokens = _int_value({"max_new_tokens": new_tokens}, "max_new_tokens", "task.generation")
            demands.append(
                PositionDemand("task.generation.max_new_tokens", new_tokens, new_tokens, "decoding")
            )
        return demands
    if issubclass(data_cls, LMEvalDataModule):
        length = _int_value(data, "seq_length")
        if data.get("kind", "lambada") == "lambada":
            # [CLS] context [mask] eos | [sop] answer: Part A <= L - k (k >= 1), blocks <= k <= L - 4
            return [PositionDemand("data.seq_length", length, length - 2, "LAMBADA samples")]
        # windows of W = L - 1 tokens: the first scores W - 1 tokens (blocks <= L - 2); a later one prompts
        # with W - overlap tokens after [CLS] (positions <= L - overlap); unidirectional prompts with one
        overlap = data.get("overlap", 256)
        largest = length - 2
        if not data.get("unidirectional") and isinstance(overlap, int) and overlap > 0:
            largest = max(largest, length - overlap)
        return [PositionDemand("data.seq_length", length, largest, "perplexity windows")]
    return []


def seq2seq_positions(data_cls: Any, demands: list[PositionDemand], model: GLMConfig) -> int | None:
    """Seq2seq finetuning raises ``P`` to what its lengths need, as the original's ``tasks/seq2seq/finetune.py``
    does with ``--src-seq-length`` (docs/original-glm.md §1.1; loading extends shorter tables). The new
    ``model.max_sequence_length``, or None when the tables are long enough (or positions are rotary)."""
    if not (inspect.isclass(data_cls) and issubclass(data_cls, Seq2SeqDataModule)) or not demands:
        return None
    needed = max(d.largest for d in demands)
    if model.position_encoding != "learned" or needed <= model.max_sequence_length:
        return None
    log.info(
        "model.max_sequence_length: %d -> %d for %s (seq2seq raises the position tables to its lengths)",
        model.max_sequence_length,
        needed,
        ", ".join(f"{d.key}={d.value}" for d in demands if d.largest > model.max_sequence_length),
    )
    return needed


def check_positions(demands: list[PositionDemand], model: GLMConfig, from_export: bool = False) -> None:
    """Every demand must fit the learned position tables (``max_sequence_length + 1`` rows, ids 0..P:
    docs/original-glm.md §1.1); rotary positions have no table. One ConfigError naming the key, its value,
    the model's limit and where that limit comes from."""
    if model.position_encoding != "learned":
        return
    limit = int(model.max_sequence_length)
    for d in demands:
        if d.largest <= limit:
            continue
        most = d.value - (d.largest - limit)
        if from_export:
            origin = f"task.pretrained's model_config.yaml: {model.name}, max_sequence_length={limit}"
            fix = (
                f"set {d.key} <= {most}, or model.max_sequence_length >= {d.largest} (the export's tables "
                "are then extended with fresh rows, as the original's load_pretrained does)"
            )
        else:
            origin = f"model preset {model.name}, model.max_sequence_length={limit}"
            fix = f"set {d.key} <= {most}, or model.max_sequence_length >= {d.largest}"
        raise ConfigError(
            f"{d.key}: {d.value} gives {d.what} position ids up to {d.largest}, but the model's position "
            f"tables hold ids 0..{limit} ({origin}); {fix}"
        )


def check_stage_splits(data_cls: Any, data: Mapping[str, Any], stages: list[str]) -> None:
    """A stage whose split the data config leaves out would fail after training; refused now."""
    if not inspect.isclass(data_cls):
        return
    if (
        issubclass(data_cls, Seq2SeqDataModule)
        and "test" in stages
        and not (data.get("splits") or {}).get("test")
    ):
        raise ConfigError(
            "data.splits.test: null, but stages include test (it decodes that split); set it "
            "or leave test out of stages"
        )
    if issubclass(data_cls, ClozeDataModule) and "predict" in stages:
        try:
            task = get_task(str(data.get("task")))
        except ValueError as err:
            raise ConfigError(f"data.task: {err}") from None
        if task.files.get("test") is None:
            raise ConfigError(
                f"stages: predict writes a submission for the {task.name} test split, but this data layout "
                "has no test file for it; leave predict out of stages"
            )


# ---- runs that would train nothing -------------------------------------------------------------------------
def check_trains_some_steps(trainer: Mapping[str, Any]) -> None:
    """With ``fit`` in the stages, a loop limit of 0 trains nothing (and would still export the untrained
    weights and exit 0): refused, naming the key."""
    for key, unlimited in (("max_steps", "-1: no step limit"), ("max_epochs", "-1: no epoch limit")):
        if trainer.get(key) == 0:
            raise ConfigError(
                f"trainer.{key}: 0 with fit in the stages trains 0 steps (the untrained weights would be "
                f"exported); set "
                f"trainer.{key} to a positive number ({unlimited}), or leave fit out of stages "
                "(e.g. stages=[validate])"
            )
    limit = trainer.get("limit_train_batches")
    if limit is not None and not isinstance(limit, bool) and limit == 0:
        raise ConfigError(
            "trainer.limit_train_batches: 0 with fit in the stages trains 0 steps; set it to a positive "
            "number of batches (or a fraction), or null for all"
        )


# what to change when the training split makes no batch, by datamodule class
_TOO_LITTLE_DATA = (
    (
        PretrainDataModule,
        "lower data.seq_length or data.micro_batch_size, add files to data.files, or set "
        "data.samples_per_epoch",
    ),
    (ClozeDataModule, "check data.max_train_examples and the task's train file"),
    (Seq2SeqDataModule, "check data.max_samples.train and data.splits.train"),
)


def train_batches_per_epoch(datamodule: Any, world_size: int) -> tuple[int, int] | None:
    """(training samples, batches per epoch on each of ``world_size`` ranks) of a datamodule whose setup ran,
    computed like its sampler and loader will (EpochIndexSampler's tail rule, the loader's drop_last); None
    when it has no such loader."""
    loader = datamodule.train_dataloader()
    sampler = getattr(loader, "sampler", None)
    batch = int(getattr(loader, "batch_size", 0) or 0)
    if not isinstance(sampler, EpochIndexSampler) or batch < 1:
        return None
    n = sampler.num_samples
    per_rank = -(-n // world_size) if sampler.tail == "pad" else n // world_size
    batches = per_rank // batch if loader.drop_last else -(-per_rank // batch)
    return n, batches


def check_train_data(datamodule: Any, world_size: int, limit_train_batches: Any = None) -> None:
    """After the datamodule's setup, before the model and trainer are built: a training split too small for
    one batch (what only the tokenised data tells, e.g. a short corpus at a long ``data.seq_length``) would
    train 0 steps; refused naming the keys. ``limit_train_batches`` as the trainer takes it (int or
    fraction)."""
    counted = train_batches_per_epoch(datamodule, world_size)
    if counted is None:
        return
    n, batches = counted
    hint = next(
        (text for cls, text in _TOO_LITTLE_DATA if isinstance(datamodule, cls)), "check the training data"
    )
    micro = int(getattr(datamodule, "micro_batch_size", 0) or 0)
    if batches == 0:
        detail = (
            f"of <= {datamodule.seq_length} tokens " if isinstance(datamodule, PretrainDataModule) else ""
        )
        dropped = (
            " (an incomplete last batch is dropped)" if isinstance(datamodule, PretrainDataModule) else ""
        )
        raise ConfigError(
            f"data: {n} training sample(s) {detail}per epoch make no batch of data.micro_batch_size={micro} "
            f"on {world_size} device(s){dropped}, so the run would train 0 steps; {hint}"
        )
    if isinstance(limit_train_batches, float) and int(batches * limit_train_batches) == 0:
        raise ConfigError(
            f"trainer.limit_train_batches: {limit_train_batches} of the {batches} "
            "training batches per epoch is less than one, so the run would train 0 steps; raise it "
            "(or give a number of batches)"
        )


def _local_rank() -> int:
    """This process's rank on its node from the launcher's environment (0 before Lightning starts any)."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def check_data_at_start_up(
    datamodule: Any, stages: list[str], world_size: int, limit_train_batches: Any = None
) -> None:
    """Read every split the stages will read (``datamodule.setup(stage)`` for each; the datamodules cache
    what they read, so Lightning's own calls later cost nothing), then refuse a training split too small for
    one batch: a bad test file or too little data fails before the model and trainer are built, not after
    training. On local rank 0 only, as Lightning's ``prepare_data``: the other processes of a node would
    read and tokenise the same files at the same time (they read them from the cache in ``fit``)."""
    if _local_rank() != 0:
        return
    for stage in dict.fromkeys(stages):
        datamodule.setup(stage)
    if "fit" in stages:
        check_train_data(datamodule, world_size, limit_train_batches)

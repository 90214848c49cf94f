"""`GLMConfig`: every architecture setting of a GLM backbone, with named presets.

No torch import here: configs are validated at start-up, before anything expensive is built.
Field names follow the original GLM / Hugging Face port where one exists (`num_layers`,
`hidden_size`, `num_attention_heads`, `vocab_size`, `max_sequence_length`), so a `config.json` of the
HF port maps onto it field by field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ATTENTION_IMPLS = ("sdpa", "eager", "flex", "auto")
POSITION_ENCODINGS = ("learned", "rotary")
LAYERNORM_ORDERS = ("pre", "deepnorm")
MLP_KINDS = ("gelu", "geglu")
GELU_APPROXIMATIONS = ("tanh", "none")


@dataclass
class GLMConfig:
    """Shape and switches of the GLM backbone.

    Defaults reproduce the original GLM (docs/original-glm.md §1): pre-LN blocks, fused QKV, tanh GELU, LayerNorm eps
    1e-5, two learned position tables of `max_sequence_length + 1` rows, tied output head without bias.
    The GLM-130B design options (rotary 2D positions, DeepNorm, GeGLU, embedding-gradient shrink,
    fp32 softmax) are switches, all off by default.
    """

    name: str = "custom"
    # --- shape ---
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    vocab_size: int = 8064  # padded V: logits cover all of it (docs/original-glm.md §4.1)
    max_sequence_length: int = 512  # P; learned position tables have P + 1 rows (docs/original-glm.md §1.1)
    intermediate_size: int | None = None  # None: 4h (gelu) or 8h/3 (geglu, GLM-130B)
    # --- regularisation / init (docs/original-glm.md §1.6, §1.8) ---
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layernorm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    # --- kernels ---
    attention: str = "sdpa"  # sdpa (default) | eager (readable reference) | flex | auto
    # --- GLM-130B design options ---
    position_encoding: str = "learned"  # learned tables | rotary (2D RoPE on both position ids)
    rotary_base: float = 10000.0
    layernorm_order: str = "pre"  # pre (original GLM) | deepnorm (post-LN with DeepNet scaling)
    deepnorm_alpha: float | None = None  # None: DeepNet rule (2N)^(1/4) for the layer count
    deepnorm_beta: float | None = None  # None: DeepNet rule (8N)^(-1/4)
    mlp: str = "gelu"  # gelu (h -> 4h -> h) | geglu (GLM-130B)
    gelu_approximate: str = "tanh"  # tanh (original GLM training) | none (erf, as the HF port)
    embedding_grad_scale: float = 1.0  # alpha of GLM-130B's embedding gradient shrink; 1.0 = off
    softmax_in_fp32: bool = False  # attention scores/softmax in fp32 under fp16/bf16 (GLM-130B)

    def __post_init__(self) -> None:
        problems = []
        for key in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_sequence_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{key} must be a positive int, got {value!r}")
        if not problems and self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        for key, allowed in (
            ("attention", ATTENTION_IMPLS),
            ("position_encoding", POSITION_ENCODINGS),
            ("layernorm_order", LAYERNORM_ORDERS),
            ("mlp", MLP_KINDS),
            ("gelu_approximate", GELU_APPROXIMATIONS),
        ):
            if getattr(self, key) not in allowed:
                problems.append(f"{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        for key in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= float(getattr(self, key)) < 1.0:
                problems.append(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        if not 0.0 < float(self.embedding_grad_scale) <= 1.0:
            problems.append(f"embedding_grad_scale must be in (0, 1], got {self.embedding_grad_scale!r}")
        if self.position_encoding == "rotary" and not problems and self.head_size % 4:
            problems.append(f"rotary 2D positions need a head size divisible by 4, got {self.head_size}")
        if self.intermediate_size is not None and self.intermediate_size <= 0:
            problems.append(f"intermediate_size must be positive, got {self.intermediate_size!r}")
        if problems:
            raise ValueError(f"invalid GLMConfig '{self.name}': " + "; ".join(problems))
        if self.layernorm_order == "deepnorm":
            # DeepNet (Wang et al. 2022) rule for a single N-layer stack.
            if self.deepnorm_alpha is None:
                self.deepnorm_alpha = (2.0 * self.num_layers) ** 0.25
            if self.deepnorm_beta is None:
                self.deepnorm_beta = (8.0 * self.num_layers) ** -0.25

    # --- derived values ---
    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.mlp == "geglu":
            return int(8 * self.hidden_size / 3)  # 2/3 of 4h keeps the parameter count (GLM-130B)
        return 4 * self.hidden_size

    def num_parameters(self) -> int:
        """Parameter count from the shapes (tied embedding counted once); docs/original-glm.md §11 formula for defaults."""
        h, ffn = self.hidden_size, self.ffn_size
        mlp_in = 2 * ffn if self.mlp == "geglu" else ffn
        per_layer = (3 * h * h + 3 * h) + (h * h + h) + (mlp_in * h + mlp_in) + (ffn * h + h) + 4 * h
        pos = 2 * (self.max_sequence_length + 1) * h if self.position_encoding == "learned" else 0
        return self.num_layers * per_layer + self.vocab_size * h + pos + 2 * h

    def flops_per_token(self, seq_length: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), attention included."""
        h, ffn, n_layers = self.hidden_size, self.ffn_size, self.num_layers
        mlp_in = 2 * ffn if self.mlp == "geglu" else ffn
        matmul_params = n_layers * (4 * h * h + mlp_in * h + ffn * h) + self.vocab_size * h
        attention = n_layers * 2 * seq_length * h  # QK^T and PV, 2 FLOPs per multiply-add each
        return 3 * (2 * matmul_params + 2 * attention)

    def head_flops_per_token(self) -> float:
        """The tied head's share of :meth:`flops_per_token` (forward + backward of ``V x h``): what a position
        costs less when the head is not projected there (``GLM.forward(logits_index=)``)."""
        return 3 * 2 * self.vocab_size * self.hidden_size

    # --- construction ---
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GLMConfig:
        """A named preset (see `PRESETS`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown GLM preset {name!r}; known presets: {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown GLMConfig field(s) {sorted(unknown)} for preset {name!r}")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GLMConfig:
        """From a plain dict; `preset` (or `name` of a preset) supplies the defaults."""
        values = dict(values)
        preset = values.pop("preset", None)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown GLMConfig field(s) {sorted(unknown)}; known: {cls.field_names()}")
        if preset is not None:
            return cls.from_name(preset, **values)
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> GLMConfig:
        import yaml  # pyyaml comes with omegaconf

        with open(path) as f:
            values = yaml.safe_load(f) or {}
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def _bert(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    return dict(
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        vocab_size=30592,
        max_sequence_length=512,
    )


# docs/original-glm.md §11 (original releases) plus small presets for tests and CPU demos. V for our sentencepiece
# tokenizers: 8000 pieces padded to a multiple of 128 = 8064.
PRESETS: dict[str, dict[str, Any]] = {
    "glm-tiny": dict(
        num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=8064, max_sequence_length=512
    ),
    "glm-small": dict(
        num_layers=6, hidden_size=384, num_attention_heads=6, vocab_size=8064, max_sequence_length=512
    ),
    "glm-base": _bert(12, 768, 12),
    "glm-large": _bert(24, 1024, 16),
    "glm-roberta-large": dict(
        num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=50304, max_sequence_length=512
    ),
    "glm-410m": _bert(30, 1024, 16),
    "glm-515m": _bert(30, 1152, 18),
    "glm-2b": dict(
        num_layers=36, hidden_size=2048, num_attention_heads=32, vocab_size=50304, max_sequence_length=1024
    ),
    "glm-10b": dict(
        num_layers=48, hidden_size=4096, num_attention_heads=64, vocab_size=50304, max_sequence_length=1024
    ),
    "glm-large-chinese": dict(
        num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=50048, max_sequence_length=1024
    ),
    "glm-10b-chinese": dict(
        num_layers=48, hidden_size=4096, num_attention_heads=64, vocab_size=50048, max_sequence_length=1024
    ),
    # The GLM-130B design (Zeng et al. 2022): a shape to build and benchmark; no original weights load.
    "glm-130b": dict(
        num_layers=70,
        hidden_size=12288,
        num_attention_heads=96,
        vocab_size=150528,
        max_sequence_length=2048,
        position_encoding="rotary",
        layernorm_order="deepnorm",
        mlp="geglu",
        embedding_grad_scale=0.1,
        softmax_in_fp32=True,
    ),
}

__all__ = ["GLMConfig", "PRESETS"]


def _check_presets() -> None:  # cheap sanity check at import; a broken preset should fail loudly
    for preset_name, values in PRESETS.items():
        GLMConfig(name=preset_name, **values)
    assert math.isclose(GLMConfig.from_name("glm-base").num_parameters() / 1e6, 109.3, abs_tol=0.1)


_check_presets()

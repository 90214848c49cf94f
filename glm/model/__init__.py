"""The GLM backbone: `GLMConfig` (shape + switches, named presets) and `GLM` (the model)."""

from glm.model.config import PRESETS, GLMConfig
from glm.model.glm import GLM, GLMOutput, KVCache, build_attention_mask, build_block_mask

__all__ = ["GLM", "GLMConfig", "GLMOutput", "KVCache", "PRESETS", "build_attention_mask", "build_block_mask"]

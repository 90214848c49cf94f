"""Checkpoint I/O (atomic save, safe load, export dirs) and converters for original GLM / HF checkpoints.

CLI: `python -m glm.checkpoint convert --from original|hf|ours PATH --out DIR [--to ours|original|hf]`.
"""

from glm.checkpoint.io import atomic_save, export_model, load_export, safe_load
from glm.checkpoint.pretrained import LoadReport, load_pretrained_into

__all__ = [
    "LoadReport",
    "atomic_save",
    "export_model",
    "load_export",
    "load_pretrained_into",
    "safe_load",
]

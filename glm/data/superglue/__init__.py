"""SuperGLUE tasks as cloze problems (readers, patterns, verbalizers); the layout lives in `glm.data.cloze`."""

from glm.data.superglue.examples import ClozeExample, punctuation_standardization
from glm.data.superglue.tasks import MASK, TASKS, SuperGLUETask, get_task, with_prompt_slots

__all__ = [
    "MASK",
    "TASKS",
    "ClozeExample",
    "SuperGLUETask",
    "get_task",
    "punctuation_standardization",
    "with_prompt_slots",
]

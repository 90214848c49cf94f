"""Data: the datamodules (their shared base in :mod:`glm.data.base`), masking, packing, sampling, readers,
the data root and downloads."""

import glm.data.paths  # noqa: F401  (installs the missing-file hint of the data root)

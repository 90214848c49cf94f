"""``python -m glm.tokenizer``: see :mod:`glm.tokenizer.cli`."""

import sys

from glm.tokenizer.cli import main

sys.exit(main())

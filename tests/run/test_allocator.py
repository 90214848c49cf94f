"""Host allocator (glm/utils/allocator.py): with ``allocator=reuse`` a training loop's large buffers stop
page-faulting once the heap has warmed up; the C library's defaults fault on every one. Each mode runs in a
fresh interpreter (mallopt changes the whole process), counting minor page faults per 64 MiB buffer."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from glm.errors import ConfigError
from glm.run.validation import validate
from glm.utils.allocator import set_host_allocator

PAGES_PER_BUFFER = 64 * 2**20 // 4096  # 16384 pages of 4 KiB

SCRIPT = """
import json, resource, sys, torch
from glm.utils.allocator import set_host_allocator
applied = set_host_allocator(sys.argv[1])
faults = []
for _ in range(20):  # what a training step does: allocate large buffers, use them, free them
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 * 2**20)
    t.fill_(1.0)
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)
def test_reuse_stops_page_faults_after_warm_up_and_system_faults_every_buffer() -> None:
    reuse, system = _faults("reuse"), _faults("system")
    assert reuse["applied"] is True and system["applied"] is False
    # the defaults mmap every 64 MiB buffer afresh: one fault per page, every iteration
    assert all(f >= PAGES_PER_BUFFER for f in system["faults"][10:]), system["faults"]
    # reuse: once freed chunks have coalesced (a few iterations), the same pages serve every buffer
    assert sum(reuse["faults"][10:]) < PAGES_PER_BUFFER // 10, reuse["faults"]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"allocator must be one of \['reuse', 'system'\], got 'tcmalloc'"):
        set_host_allocator("tcmalloc")


def test_config_error_names_the_allocator_key(compose_cfg) -> None:
    cfg = compose_cfg("ci_tiny", ["logger=none", "allocator=jemalloc"])
    with pytest.raises(
        ConfigError, match=r"^allocator: expected one of \['reuse', 'system'\], got 'jemalloc'"
    ):
        validate(cfg)
    assert compose_cfg("ci_tiny", ["logger=none"]).allocator == "reuse"  # the default

"""glibc allocator settings for processes that run PyTorch on the CPU.

PyTorch's activation buffers are otherwise mapped and unmapped on every forward pass,
which made CPU inference 1.5-2x slower here (see the README). glibc reads these variables
only when a process starts, so the CLI re-executes itself with them and a local cluster
starts its workers with them. A module of constants: the CLI reads it before it imports
anything heavy.
"""

from __future__ import annotations

ALLOCATOR_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_ARENA_MAX": "1",
}

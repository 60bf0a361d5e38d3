"""tune_malloc: freed blocks under the cache size stay in the heap for reuse; the environment wins over it.

Each case runs in a fresh interpreter (malloc settings are per process): it allocates and frees 20 MiB
with the C library's own malloc, then reads glibc's mallinfo2: with the thresholds tuned the block came
from the heap and its memory is still there, free for reuse; with glibc's defaults it was a mapping of
its own, handed back to the kernel on free.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from detector.allocator import MAX_CACHE_MIB, tune_malloc

ROOT = Path(__file__).resolve().parents[2]
BLOCK = 20 << 20

PROBE = f"""
import ctypes, json, sys
from detector.allocator import tune_malloc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = Mallinfo2
tuned = tune_malloc(int(sys.argv[1]))
block = libc.malloc({BLOCK})
ctypes.memset(block, 1, {BLOCK})
mapped = libc.mallinfo2().hblkhd
libc.free(block)
print(json.dumps({{"tuned": tuned, "mapped_while_held": mapped, "free_in_heap": libc.mallinfo2().fordblks}}))
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")


def _probe(cache_mib: int, **env: str) -> dict[str, int | bool]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    environ["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE, str(cache_mib)], capture_output=True, text=True,
                         env=environ, cwd=ROOT, timeout=60, check=True)
    result: dict[str, int | bool] = json.loads(out.stdout)
    return result


@glibc
def test_tuned_a_freed_block_stays_in_the_heap() -> None:
    result = _probe(64)
    assert result["tuned"] is True
    assert result["mapped_while_held"] < BLOCK            # served from the heap, not a mapping of its own
    assert result["free_in_heap"] >= BLOCK                # kept for the next allocation


@glibc
def test_glibc_defaults_hand_a_freed_block_back() -> None:
    result = _probe(0)
    assert result["tuned"] is False
    assert result["mapped_while_held"] >= BLOCK
    assert result["free_in_heap"] < BLOCK


@glibc
def test_a_cache_smaller_than_the_block_maps_it() -> None:
    result = _probe(8)                  # allocations from 8 MiB up keep their own mappings
    assert result["tuned"] is True
    assert result["mapped_while_held"] >= BLOCK
    assert result["free_in_heap"] < BLOCK


@glibc
@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"])
def test_the_environment_wins(name: str) -> None:
    result = _probe(64, **{name: str(1 << 17)})
    assert result["tuned"] is False
    assert result["mapped_while_held"] >= BLOCK


@pytest.mark.parametrize("bad", [-1, MAX_CACHE_MIB + 1])
def test_out_of_range_sizes_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match=r"cache_mib must be in 0\.\.2047"):
        tune_malloc(bad)

"""--cpu-allocator: glibc's malloc keeps freed memory in the process (see transferkit.allocator)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

import transferkit

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's mallopt")

# In a fresh process (the settings are process-wide and stay): allocate a tensor of the given MiB, read glibc's
# mallinfo2 while it lives and after it is freed. hblkhd: bytes in mmap-served blocks (the tensor's share, over what
# the imports left); arena: bytes of the heap.
PROBE = """
import ctypes, json, sys
from transferkit.allocator import keep_freed_memory
applied = keep_freed_memory(sys.argv[1])
import torch

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
found = []
for mib in map(int, sys.argv[2:]):
    before = mallinfo2().hblkhd
    tensor = torch.ones(mib * 2**18)  # float32
    alive = mallinfo2()
    del tensor
    freed = mallinfo2()
    found.append({"applied": applied, "mmapped_while_alive": alive.hblkhd - before, "heap_while_alive": alive.arena,
                  "heap_after_free": freed.arena})
print(json.dumps(found))
"""


def _probe(setting: str, *mib: int) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", PROBE, setting, *map(str, mib)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_auto_serves_large_blocks_from_the_heap_and_keeps_them_after_free():
    mib = 2**20
    # malloc as it is: a 24 MiB block (a batch's activations) is an mmap of its own, unmapped when freed (glibc's
    # threshold starts at 128 KiB and rises only as mmap-served blocks are freed; the imports leave it below 24 MiB)
    [off] = _probe("off", 24)
    assert off["applied"] is False and off["mmapped_while_alive"] >= 24 * mib
    # keep freed memory: the same block comes from the heap, and the heap keeps it after free (no trimming) ...
    # and the next, larger block (above the 32 MiB threshold) is carved from the heap's free top as well
    on, big = _probe("auto", 24, 64)
    assert on["applied"] is True and on["mmapped_while_alive"] == 0
    assert on["heap_after_free"] == on["heap_while_alive"] >= 24 * mib
    assert big["mmapped_while_alive"] == 0 and big["heap_after_free"] == big["heap_while_alive"] >= 64 * mib


def test_off_never_applies_and_the_run_records_the_setting(class_folder, tiny_options, tmp_path, monkeypatch):
    monkeypatch.setattr(transferkit.allocator, "_applied", None)  # as in a fresh process
    assert transferkit.allocator.keep_freed_memory("off") is False and transferkit.allocator._applied is None
    result = transferkit.train(class_folder, out=str(tmp_path / "r"), progress=False, cpu_allocator="off",
                               **tiny_options)
    info = json.loads((result.run_dir / "transferkit.json").read_text())
    assert info["cpu_allocator"] == {"setting": "off", "keeps_freed_memory": False}
    on = transferkit.train(class_folder, out=str(tmp_path / "on"), progress=False, **tiny_options)
    info = json.loads((on.run_dir / "transferkit.json").read_text())
    glibc_here = platform.libc_ver()[0] == "glibc"
    assert info["cpu_allocator"] == {"setting": "auto", "keeps_freed_memory": glibc_here}


def test_bad_setting_is_refused_with_the_choices(class_folder, tiny_options, tmp_path):
    with pytest.raises(transferkit.TransferKitError, match="cpu.allocator.*auto.*off"):
        transferkit.train(class_folder, out=str(tmp_path / "r"), progress=False, cpu_allocator="jemalloc",
                          **tiny_options)
    assert not (tmp_path / "r").exists()


def test_loading_a_run_keeps_freed_memory_as_the_run_trained(vision_run, tmp_path, monkeypatch):
    """predict / evaluate / serve load runs with ``transferkit.load``: the process gets the run's own setting (a run
    from before the option existed: auto), before the model takes its memory."""
    import shutil

    import transferkit.predict

    seen = []
    monkeypatch.setattr(transferkit.predict, "keep_freed_memory", seen.append)
    transferkit.load(vision_run)
    off = tmp_path / "off-run"
    shutil.copytree(vision_run, off)
    info = json.loads((off / "transferkit.json").read_text())
    (off / "transferkit.json").write_text(json.dumps({**info, "cpu_allocator": {"setting": "off"}}))
    transferkit.load(off)
    del info["cpu_allocator"]
    (off / "transferkit.json").write_text(json.dumps(info))
    transferkit.load(off)
    assert seen == ["auto", "off", "auto"]

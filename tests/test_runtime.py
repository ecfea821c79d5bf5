import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_allocator_setting_applies_once_and_can_be_turned_off():
    code = ("import sam3d_med.runtime as r; a = r.keep_freed_memory_for_reuse(); b = r.keep_freed_memory_for_reuse(); "
            "print(a, b)")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert on.stdout.split() == ["True", "True"]
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"SAM3D_MED_GLIBC_DEFAULTS": "1", "PATH": ""})
    assert off.stdout.split() == ["False", "False"]


def test_a_command_whose_reader_stops_early_ends_quietly(monkeypatch):
    """`sam3d-med model-info | head -1`: the reader closes the pipe; the command ends with status 0,
    not a BrokenPipeError traceback (which also failed `make demo` under pipefail)."""
    import os
    import sys

    from sam3d_med.cli import run_command

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone
    stream = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stream)

    def command(args):
        print("x" * 200_000, flush=True)

    assert run_command(command, None) == 0

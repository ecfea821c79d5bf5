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

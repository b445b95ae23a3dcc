"""The process-wide malloc setting can be switched off by the environment."""

import subprocess
import sys

import pytest


def _run(env_value):
    code = ("import mixedmodels.allocator as a; print(a.keep_freed_memory())")
    env = {"PATH": "/usr/bin:/bin"}
    if env_value is not None:
        env["MIXEDMODELS_KEEP_FREED_MEMORY"] = env_value
    import os
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("value", ["0", "false", "No"])
def test_opt_out(value):
    assert _run(value) == "False"


def test_default_on_glibc():
    import platform
    expected = "True" if (platform.system() == "Linux"
                          and platform.libc_ver()[0] == "glibc") else "False"
    assert _run(None) == expected

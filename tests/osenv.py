"""Real operating-system situations for CLI tests: a read-only bind mount, another user.

Both need root (the tests run as root in CI). Without it, or where the kernel refuses the mount,
a test skips locally; with ``CI`` set it fails instead, so CI never passes by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _unavailable(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: this test must run)")
    pytest.skip(why)


@contextlib.contextmanager
def readonly_bind(src: Path):
    """``src`` bind-mounted read-only at a new directory (yielded); unmounted afterwards."""
    if os.geteuid() != 0:
        _unavailable("a read-only bind mount needs root")
    dst = Path(tempfile.mkdtemp(prefix="meterd-ro-"))
    try:
        for cmd in (["mount", "--bind", str(src), str(dst)], ["mount", "-o", "remount,ro,bind", str(dst)]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                subprocess.run(["umount", str(dst)], capture_output=True, timeout=30)
                _unavailable(f"{' '.join(cmd[:3])} failed: {r.stderr.strip()}")
        try:
            yield dst
        finally:
            subprocess.run(["umount", str(dst)], check=True, timeout=30)
    finally:
        dst.rmdir()


def shared_dir() -> Path:
    """A fresh directory outside pytest's private (0700) temporary tree, mode 0755, owned by
    root: another user can read what is in it and write nothing. Removed by the caller."""
    d = Path(tempfile.mkdtemp(prefix="meterd-shared-"))
    d.chmod(0o755)
    return d


def as_nobody(store_dir: Path) -> list[str]:
    """The command prefix that runs a command as a user who may read ``store_dir`` (0755, files
    0644) but not write it.

    Where the user ``nobody`` can run meterd from this checkout, that is ``nobody`` and the
    directory stays root's. Where it cannot (the checkout or the interpreter sits in a private
    directory, such as a clone under /root), the roles swap: ``store_dir`` and what is in it are
    given to ``nobody`` and the reader is root stripped of every capability, so the kernel checks
    its access by the "other" mode bits, exactly as for another user. Either way the test runs.
    Call it once what the reader must find in ``store_dir`` has been written."""
    if os.geteuid() != 0:
        _unavailable("running a command as another user needs root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        _unavailable("setpriv (util-linux) is not installed")
    prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    r = subprocess.run([*prefix, sys.executable, "-c", "import meterd"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    if r.returncode == 0:
        return prefix
    import pwd

    nobody = pwd.getpwnam("nobody")
    for p in [store_dir, *store_dir.rglob("*")]:
        os.chown(p, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--"]


def meter_cmd(*args: str) -> list[str]:
    """``meter ARGS`` as a subprocess command line (the fake NVML, no GPU)."""
    return [sys.executable, "-m", "tests.fakes.run_meter", *args]


def run_meter(*args: str, prefix: list[str] = (), env: dict | None = None, timeout: float = 60):
    e = {k: v for k, v in os.environ.items() if not k.startswith("METERD_")}
    e.update(env or {})
    return subprocess.run([*prefix, *meter_cmd(*args)], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=timeout)

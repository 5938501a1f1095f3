"""The wheel installs nothing but ``meterd/``: no top-level ``agent``, ``probes``, ``kernels``...

A top-level ``kernels/__init__.py`` of ours would overwrite Hugging Face's ``kernels`` package
(and ``pip uninstall meterd`` would then delete it), so the wheel's file list is the contract.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "probes", "kernels", "reports", "collector")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # A copy of the source, so the build's own build/ and egg-info never land in the checkout.
    src = build / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.db*", ".pytest_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "PIP_NO_INPUT": "1", "TMPDIR": str(build)})
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("meterd-*.whl")
    return whl


def test_wheel_holds_only_the_meterd_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"meterd", next(t for t in tops if t.endswith(".dist-info"))}, sorted(tops)
    for pkg in PACKAGES:
        assert f"meterd/{pkg}/__init__.py" in names
        assert not any(n.startswith(f"{pkg}/") for n in names)
    assert "meterd/__init__.py" in names and "meterd/agent/cli.py" in names
    assert "meterd/kernels/gpu.py" in names and "meterd/collector/app.py" in names


def test_console_script_points_into_the_namespace(wheel):
    z = zipfile.ZipFile(wheel)
    (ep,) = [n for n in z.namelist() if n.endswith("entry_points.txt")]
    assert "meter = meterd.agent.cli:main" in z.read(ep).decode()

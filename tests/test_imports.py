"""Every module of the installed packages imports, and what the code reaches at run time through other
libraries is installed too (the suite runs in the environment `make install` made, so a dependency left
out of pyproject.toml fails here rather than on a user's machine)."""
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ("runtime", "model", "export", "benchmarks")
# Optional at run time: imported only where the hardware is (each module imports them lazily).
OPTIONAL = {"tensorrt", "pycuda", "sahi", "ray"}


def _modules():
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield name
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if not info.name.endswith("__main__"):
                yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name in OPTIONAL:
            pytest.skip(f"{name} needs the optional {e.name}")
        raise


# What `make install` must bring beside the imports above, including what another library loads on
# first use and the code never names: torch's dynamo ONNX exporter (export/export_onnx.py) needs
# onnxscript (the dependency a fresh machine once lacked).
@pytest.mark.parametrize("name", ["onnxscript", "onnx", "pycocotools", "scipy", "hypothesis", "matplotlib", "tqdm"])
def test_run_time_dependency_installed(name):
    assert importlib.util.find_spec(name) is not None, f"{name} is not installed: pyproject.toml must declare it"


# The benchmarks are scripts of the checkout, not installed: each must start as `python benchmarks/X.py`
# from any folder (its preamble puts the checkout on the path). --help imports everything it needs.
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                                          if p.name not in ("__init__.py", "common.py", "uncertainty.py")))
def test_benchmark_script_starts_from_anywhere(script, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout

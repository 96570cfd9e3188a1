"""Every module of the installed packages imports, and what the code reaches at run time through other
libraries is installed too (the suite runs in the environment `make install` made, so a dependency left
out of pyproject.toml fails here rather than on a user's machine)."""
import importlib
import importlib.util
import pkgutil

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

"""Builds runtime._C with CMake (pattern of pybind11's cmake_example).

AUTOFOCUS_CUDA=0/1 forces the CUDA kernels off/on (default: on when nvcc is found);
CMAKE_ARGS passes extra arguments to CMake.
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        cuda = {"0": "OFF", "1": "ON"}.get(os.environ.get("AUTOFOCUS_CUDA", ""), "AUTO")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DAUTOFOCUS_CUDA={cuda}",
            "-DCMAKE_BUILD_TYPE=Release",
        ] + os.environ.get("CMAKE_ARGS", "").split()
        build_dir = Path(self.build_temp).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).parent.resolve()
        subprocess.run(["cmake", str(root), *args], cwd=build_dir, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("runtime._C")], cmdclass={"build_ext": CMakeBuild})

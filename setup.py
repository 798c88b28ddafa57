"""Build gpo_mpi._kernels by running CMake from setuptools' build_ext step.

Everything else about the package lives in pyproject.toml; this file only
teaches setuptools to hand the extension to CMakeLists.txt.
"""
import os
import subprocess
import sys
from pathlib import Path

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        # CMake writes the module straight to where setuptools expects it, so
        # both `pip install .` and `pip install -e .` pick it up.
        output_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("GPO_MPI_BUILD_TYPE", "Release")
        configure = [
            "cmake", str(ROOT),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output_dir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{build_type.upper()}={output_dir}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        ]
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", "2"], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("gpo_mpi._kernels")],
    cmdclass={"build_ext": CMakeBuild},
)

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

# ASPEN_SANITIZE=address or thread: an instrumented build for tests/sanitize.sh.
SANITIZE = [f"-fsanitize={os.environ['ASPEN_SANITIZE']}", "-fno-omit-frame-pointer", "-g"] \
    if os.environ.get("ASPEN_SANITIZE") else []

setup(
    packages=find_packages(include=["aspen_torch", "aspen_torch.*"]),
    ext_modules=[
        CppExtension(
            "aspen_torch._C",
            sorted(glob.glob("csrc/*.cpp")),
            # -fopenmp as torch is built: at::parallel_for inlined here would
            # otherwise run serially. libgomp resolves to the copy torch loaded.
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17", *SANITIZE],
            extra_link_args=["-fopenmp", *SANITIZE],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

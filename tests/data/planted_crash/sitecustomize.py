"""Test-only: a real native crash planted in ``data.readers.read_study``, in every process that has
this folder on PYTHONPATH (the test, ``medseg serve`` and the isolated reader's children alike).

A file whose name holds ``plant-segv`` makes the reader dereference a null pointer (signal 11, as
GDCM did on ~100,000 nested sequence items), ``plant-abort`` calls abort() (signal 6, as a C++
``std::terminate`` would), ``plant-hang`` spins in pure Python (the CPU/wall-clock limit). Where the
reader runs in the server's own process, the server dies: that is what the isolation prevents.
"""

import importlib.abc
import importlib.util
import os
import sys


def _plant(module) -> None:
    real = module.read_study

    def read_study(path, *args, **kwargs):
        name = os.path.basename(str(path))
        if "plant-segv" in name:
            import ctypes

            ctypes.string_at(0)  # SIGSEGV
        if "plant-abort" in name:
            os.abort()  # SIGABRT
        if "plant-hang" in name:
            while True:
                pass
        return real(path, *args, **kwargs)

    module.read_study = read_study


class _PlantFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "data.readers":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_plant(module):
            exec_module(module)
            _plant(module)

        spec.loader.exec_module = exec_and_plant
        return spec


sys.meta_path.insert(0, _PlantFinder())

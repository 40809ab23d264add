"""Every program launch.py can run.

Importing this package imports every module of mmgin (except mmgin.testing), so that all
gin configurables are registered before a config is parsed, whoever added them.
"""

import importlib
import pkgutil

import mmgin


def _import_all() -> None:
    for module in pkgutil.walk_packages(mmgin.__path__, prefix="mmgin."):
        if module.name.startswith("mmgin.testing"):
            continue
        importlib.import_module(module.name)


_import_all()

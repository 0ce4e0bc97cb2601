"""The files of scripts/ as modules, for the unit tests of their functions.

scripts/ is not a package (each file runs as `python scripts/NAME.py`), so a test loads
the file by path instead of importing it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `sluice_<name>_script`, loaded once per session."""
    module_name = f"sluice_{name}_script"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses resolve its annotations through sys.modules.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module

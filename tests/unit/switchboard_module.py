"""helpers/switchboard.py loaded as a module: it is a script (installed root-owned, run
by the setuid wrapper), not part of the `sandbox` package, and must not become one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

HELPER = Path(__file__).resolve().parents[2] / "helpers" / "switchboard.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("switchboard_helper", HELPER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sb = load()

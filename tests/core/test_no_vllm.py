"""The core is pure torch: it imports with vLLM made unimportable."""

import subprocess
import sys


def test_core_imports_without_vllm():
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "import pkgutil, importlib, echo_vllm.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('echo_vllm.core.' + m.name)\n"
        "import echo_vllm.config, echo_vllm.draft_head\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tree_attention_kernels_import_without_vllm():
    """What scripts/gpu_check.py runs on a GPU machine that has torch and Triton but no vLLM."""
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "import echo_vllm.kernels.tree_attention, echo_vllm.kernels.cascade_tree_attention\n"
        "import echo_vllm.kernels.draft_prefix, echo_vllm.kernels.paged_kv, echo_vllm.kernels.triton_tree_attention\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

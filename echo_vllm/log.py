"""Echo's logger, a child of vLLM's: same handlers, format and level as vLLM's own lines."""

import logging

logger = logging.getLogger("vllm.echo_vllm")

"""Echo's draft proposer: EAGLE-3 drafting sized by echo's options.

With topk = 1 (a chain, the only shape verified yet) it drafts exactly as vLLM's
EAGLE-3 proposer does, num_draft_tokens - 1 tokens per request per step.
"""

from __future__ import annotations

import torch
from vllm.config import VllmConfig
from vllm.v1.spec_decode.eagle import EagleProposer

from echo_vllm.config import EchoConfig


class EchoProposer(EagleProposer):
    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, echo_config: EchoConfig, runner=None
    ):
        super().__init__(vllm_config, device, runner=runner)
        assert self.num_speculative_tokens == echo_config.max_draft_tokens, (
            self.num_speculative_tokens,
            echo_config,
        )
        self.echo_config = echo_config

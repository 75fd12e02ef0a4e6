"""Sweet-Spot calibration records, and the gate echo chooses from them online.

While the batch policy records (`echo-vllm calibrate`, or echo without a gate over its first
`calibration_steps` verification steps), every request-step whose whole drafted tree was
verified yields a record: the gate statistics by depth its tree was drafted with, the
accepted path's score ranks by depth (core.calibration.NOT_ACCEPTED below it), and its
context. Online, once enough steps were seen, core.calibration.choose_gate picks the gate
and the policy switches it on.
"""

from __future__ import annotations

import numpy as np
import torch

from echo_vllm.config import EchoConfig
from echo_vllm.core.calibration import NOT_ACCEPTED, choose_gate, step_costs
from echo_vllm.core.gating import STATISTICS, echo_policy
from echo_vllm.log import logger
from echo_vllm.scheduler_patches.batch_policy import BatchPolicy

# One record: gate statistics by depth [D-1][S], the accepted path's score ranks by depth [D],
# and the context [the request's running accepted length before the step (-1 on its first),
# its prefix length], for context-aware thresholds.
Record = tuple[list[list[float]], list[int], list[float]]


class GateCalibration:
    def __init__(self, config: EchoConfig, policy: BatchPolicy):
        self.config = config
        self.policy = policy
        self.records: list[Record] = []
        self._acceptance_ema: dict[str, float] = {}  # by request, while recording
        self.online_steps = config.calibration_steps  # None once calibrated (or never online)
        self._online_batch_sizes: list[int] = []  # per verification step, while calibrating online

    def start(self) -> None:
        """Record every verification step from now on (`echo-vllm calibrate`)."""
        self.policy.recording = True
        self.records.clear()

    def forget(self, req_id: str) -> None:
        self._acceptance_ema.pop(req_id, None)

    def record(self, req_id: str, num_accepted: int, drafted: tuple[list[list[float]], list[int]] | None,
               accepted_nodes: list[int], prefix_len: int) -> None:
        """One request-step verified: its accepted count; `drafted` (gate statistics by depth,
        each node's score rank) when its whole drafted tree was verified, else None."""
        before = self._acceptance_ema.get(req_id)
        self._acceptance_ema[req_id] = num_accepted if before is None else 0.5 * before + 0.5 * num_accepted
        if drafted is None:
            return
        statistics, node_ranks = drafted
        path = [node_ranks[node] for node in accepted_nodes]
        context = [-1.0 if before is None else before, float(prefix_len)]
        self.records.append((statistics, path + [NOT_ACCEPTED] * (self.config.steps - len(path)), context))

    def step_verified(self, batch_size: int) -> None:
        """Echo without a gate: after its first calibration_steps verification steps, choose
        the gate from what they recorded and the cost model, and switch it on."""
        if self.online_steps is None:
            return
        self._online_batch_sizes.append(batch_size)
        if len(self._online_batch_sizes) < self.online_steps or not self.records:
            return  # not enough steps, or no whole tree verified yet: keep recording
        config, policy, records = self.config, self.policy, self.records
        batch = int(np.median(self._online_batch_sizes))
        costs = step_costs(policy.cost_model, policy.draft_seconds(batch) / config.steps, batch, config.num_draft_tokens)
        statistic, best, _ = choose_gate(torch.tensor([r[0] for r in records]), torch.tensor([r[1] for r in records]),
                                         config.num_draft_tokens, config.remaining_num_draft_tokens, costs)
        depth, threshold, statistic_index, remaining = policy.share(
            [best.depth, best.threshold, STATISTICS.index(statistic), best.remaining_num_draft_tokens])
        policy.calibrated(echo_policy(config.num_draft_tokens, (int(depth),), (threshold,), int(remaining),
                                      STATISTICS[int(statistic_index)]))
        self.online_steps = None
        logger.info("echo-vllm: gate calibrated online over %d steps (%d request-steps, batch ~%d): %s at depth %d, "
                    "threshold %.4f, remaining_num_draft_tokens %d; expected goodput %.3fx without the gate",
                    len(self._online_batch_sizes), len(records), batch, STATISTICS[int(statistic_index)],
                    int(depth), threshold, int(remaining), best.goodput_gain)
        records.clear()

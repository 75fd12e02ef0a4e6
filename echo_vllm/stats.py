"""Echo's counters since start-up, in one place: what the drafter, the batch policy and the
runner decided and verified. `echo_stats` (worker RPC) reports them with the policy's state;
echo_vllm/metrics.py turns their differences into Prometheus counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class EchoCounters:
    # steps drafted with the auto budget, not drafted because speculation did not pay, and
    # drafted or not against the choice expected to be better (explorations)
    num_drafted_steps: int = 0
    num_undrafted_steps: int = 0
    num_exploration_steps: int = 0
    # the global budget, summed over the steps it limited
    budget_sum: int = 0
    num_budgeted_steps: int = 0
    # verification steps, trees with drafts verified, their draft tokens, those accepted
    num_verified_steps: int = 0
    num_verified_trees: int = 0
    num_verified_drafts: int = 0
    num_accepted_drafts: int = 0
    num_proposed_drafts: int = 0  # draft tokens proposed (verified ones are never more)
    # verified trees that branched: their rows took echo's tree attention, a chain's the causal kernel
    num_branching_trees: int = 0
    # request-steps whose draft scores were NaN or infinite (a broken head): no drafts verified
    num_broken_drafts: int = 0
    # gate decisions: requests checked and stopped, and both per judge depth
    num_gate_checks: int = 0
    num_gate_stops: int = 0
    gate_by_depth: dict[int, list[int]] = field(default_factory=dict)  # depth -> [checks, stops]
    # nodes the budget bought in all and on the requests' most confident paths (go deep):
    # device scalars, summed without a host transfer per step, read by to_dict only
    nodes_bought: torch.Tensor | int = 0
    nodes_bought_deep: torch.Tensor | int = 0

    def count_gate(self, depth: int, checks: int, stops: int) -> None:
        self.num_gate_checks += checks
        self.num_gate_stops += stops
        by_depth = self.gate_by_depth.setdefault(depth, [0, 0])
        by_depth[0] += checks
        by_depth[1] += stops

    def to_dict(self) -> dict:
        out = asdict(self)
        out["nodes_bought"], out["nodes_bought_deep"] = int(self.nodes_bought), int(self.nodes_bought_deep)
        return out

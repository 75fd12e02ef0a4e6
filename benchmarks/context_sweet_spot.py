"""Does a context-aware Sweet Spot beat one threshold? An offline study on calibration records.

`echo-vllm calibrate ... --records R.pt` saves every request-step it measured: the gate
statistics by depth, the accepted path, and two contexts known at drafting time: the
request's running accepted length (EMA over its earlier steps, -1 on its first) and its
prefix length. The records are split in two seeded halves. On the first half we fit
  global       the calibration's choice: one statistic, judge depth and threshold;
  by context   the same statistic and depth, one threshold per context tercile (and one
               for requests without history);
and on the other half we compare expected goodput (committed tokens / modelled cost, the
objective the calibration maximises) against no gate.

    .venv/bin/python benchmarks/context_sweet_spot.py --records bench-out/calibration-records.pt
"""

from __future__ import annotations

import argparse

import torch

from echo_vllm.core.calibration import StepCosts, choose_sweet_spot, choose_threshold, gate_outcome


def buckets(context: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bucket of each record: 0 = no history (context < 0), then 1.. by the edges."""
    return torch.where(context < 0, 0, 1 + torch.bucketize(context, edges))


def goodput(statistic, path_ranks, depth, thresholds, num_draft_tokens, remaining, costs) -> float:
    committed, seconds, _ = gate_outcome(statistic, path_ranks, depth, thresholds, num_draft_tokens, remaining, costs)
    return committed / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = torch.load(args.records)
    statistics, path_ranks, contexts = data["statistics"], data["path_ranks"], data["contexts"]
    costs, nodes = StepCosts(**data["step_costs"]), data["num_draft_tokens"]
    order = torch.randperm(len(path_ranks), generator=torch.Generator().manual_seed(args.seed))
    fit, test = order[: len(order) // 2], order[len(order) // 2:]
    print(f"{len(path_ranks)} records, fit on {len(fit)}, evaluated on {len(test)}\n")
    print("| statistic | depth | held-out goodput vs no gate: one threshold | "
          + " | ".join(f"by {name}" for name in data["context_names"]) + " |")
    print("|---|---|---|" + "---|" * len(data["context_names"]))
    for s, name in enumerate(data["statistic_names"]):
        best, _ = choose_sweet_spot(statistics[fit, :, s], path_ranks[fit], nodes, None, costs)
        d, remaining = best.depth, best.remaining_num_draft_tokens
        test_stat, test_ranks = statistics[test, d - 1, s], path_ranks[test]
        no_gate = goodput(test_stat, test_ranks, d, 0.0, nodes, remaining, costs)
        cells = [goodput(test_stat, test_ranks, d, best.threshold, nodes, remaining, costs) / no_gate]
        for c in range(contexts.shape[1]):
            known = contexts[fit, c][contexts[fit, c] >= 0]
            edges = torch.quantile(known, torch.tensor([1 / 3, 2 / 3]))
            fit_bucket, test_bucket = buckets(contexts[fit, c], edges), buckets(contexts[test, c], edges)
            thresholds = torch.zeros(4)
            for b in range(4):
                members = fit[fit_bucket == b]
                if len(members):
                    thresholds[b] = choose_threshold(statistics[members, d - 1, s], path_ranks[members], d, nodes,
                                                     remaining, costs).threshold
            cells.append(goodput(test_stat, test_ranks, d, thresholds[test_bucket], nodes, remaining, costs) / no_gate)
        print(f"| {name} | {d} | " + " | ".join(f"{x:.4f}x" for x in cells) + " |")


if __name__ == "__main__":
    main()

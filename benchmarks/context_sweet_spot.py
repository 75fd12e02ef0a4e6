"""Does a context-aware Sweet Spot beat one gate? An offline study on calibration records.

`echo-vllm calibrate ... --records R.pt` saves every request-step it measured: the gate
statistics by depth, the accepted path, and two contexts known at drafting time: the
request's running accepted length (EMA over its earlier steps, -1 on its first) and its
prefix length. Given several record files (one calibration per prompt set), a third context
is the prompt category: the file a record came from. The records are split in two seeded
halves. On the first half we fit
  global       the calibration's choice: one statistic, judge depth and threshold;
  by context   per bucket of the context (terciles, and one bucket for requests without
               history; or the prompt category): a threshold at the global depth, or a
               judge depth and threshold of its own;
and on the other half we compare expected goodput (committed tokens / modelled cost, the
objective the calibration maximises) against the global gate, paired on the same split.
A gate fitted per bucket on half the records is what an online, EMA-updated gate per bucket
could at best converge to: where it does not beat one gate, adapting online would not either.

    .venv/bin/python benchmarks/context_sweet_spot.py --records bench-out/calibration-records.pt
    .venv/bin/python benchmarks/context_sweet_spot.py --records bench-out/records-{mt_bench,humaneval,gsm8k}.pt
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from echo_vllm.core.calibration import StepCosts, choose_gate, choose_sweet_spot, choose_threshold, gate_outcome


def tercile_buckets(fit_context: torch.Tensor, test_context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket of each record: 0 = no history (context < 0), then 1-3 by the fit half's terciles."""
    edges = torch.quantile(fit_context[fit_context >= 0], torch.tensor([1 / 3, 2 / 3]))
    return tuple(torch.where(c < 0, 0, 1 + torch.bucketize(c.contiguous(), edges)) for c in (fit_context, test_context))


def load_records(paths: list[str]) -> dict:
    """One file's records as saved; several files concatenated, with their index as a 'category' context."""
    files = [torch.load(path) for path in paths]
    data = dict(files[0])
    if len(files) > 1:
        for key in ("statistics", "path_ranks"):
            data[key] = torch.cat([f[key] for f in files])
        data["contexts"] = torch.cat([torch.cat([f["contexts"], torch.full((len(f["contexts"]), 1), float(i))], 1)
                                      for i, f in enumerate(files)])
        data["context_names"] = [*data["context_names"], "category"]
    return data


def held_out_goodput(statistics, path_ranks, buckets, choices, nodes, costs) -> float:
    """Expected goodput of the records when each bucket b gates with choices[b] (a DepthChoice):
    its statistic at the choice's depth against the choice's threshold."""
    committed = seconds = 0.0
    for b, choice in enumerate(choices):
        members = buckets == b
        if members.any():
            c, t, _ = gate_outcome(statistics[members, choice.depth - 1], path_ranks[members], choice.depth,
                                   choice.threshold, nodes, choice.remaining_num_draft_tokens, costs)
            committed, seconds = committed + c * int(members.sum()), seconds + t * int(members.sum())
    return committed / seconds


def held_out_ratios(data: dict, seed: int) -> dict[str, tuple[int, list[float]]]:
    """Per statistic: the judge depth fitted on one seeded half, and held-out goodput over no gate
    with one threshold, then per context with one threshold per bucket (the same depth) and
    with a judge depth and threshold per bucket."""
    statistics, path_ranks, contexts = data["statistics"], data["path_ranks"], data["contexts"]
    costs, nodes = StepCosts(**data["step_costs"]), data["num_draft_tokens"]
    order = torch.randperm(len(path_ranks), generator=torch.Generator().manual_seed(seed))
    fit, test = order[: len(order) // 2], order[len(order) // 2:]
    ratios = {}
    for s, name in enumerate(data["statistic_names"]):
        stat = statistics[:, :, s]
        best, _ = choose_sweet_spot(stat[fit], path_ranks[fit], nodes, None, costs)
        one_bucket = torch.zeros(len(test), dtype=torch.long)

        def held_out(buckets, choices):
            return held_out_goodput(stat[test], path_ranks[test], buckets, choices, nodes, costs)

        no_gate = held_out(one_bucket, [replace(best, threshold=0.0)])
        cells = [held_out(one_bucket, [best]) / no_gate]
        for c, context_name in enumerate(data["context_names"]):
            if context_name == "category":
                fit_bucket, test_bucket = contexts[fit, c].long(), contexts[test, c].long()
            else:
                fit_bucket, test_bucket = tercile_buckets(contexts[fit, c], contexts[test, c])
            same_depth, own_depth = [], []
            for b in range(int(torch.cat([fit_bucket, test_bucket]).max()) + 1):
                members = fit[fit_bucket == b]
                if not len(members):  # nothing to fit: the global choice
                    same_depth.append(best), own_depth.append(best)
                    continue
                same_depth.append(choose_threshold(stat[members, best.depth - 1], path_ranks[members], best.depth,
                                                   nodes, best.remaining_num_draft_tokens, costs))
                own_depth.append(choose_sweet_spot(stat[members], path_ranks[members], nodes, None, costs)[0])
            cells += [held_out(test_bucket, same_depth) / no_gate, held_out(test_bucket, own_depth) / no_gate]
        ratios[name] = (best.depth, cells)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, nargs="+",
                        help="record files from `echo-vllm calibrate --records`; several: one per prompt category "
                        "(the step costs are the first file's)")
    parser.add_argument("--splits", type=int, default=9, help="seeded fit/held-out splits (median, min-max)")
    args = parser.parse_args()

    data = load_records(args.records)
    runs = [held_out_ratios(data, seed) for seed in range(args.splits)]
    n = len(data["path_ranks"])
    print(f"{n} records; fit on {n // 2}, evaluated on the other {n - n // 2}; "
          f"median (min-max) of {args.splits} splits\n")
    columns = ["held-out goodput, one threshold vs no gate"] + [
        f"by {name}: {what} vs one threshold" for name in data["context_names"]
        for what in ("threshold", "depth and threshold")]
    print("| statistic | depth | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name in data["statistic_names"]:
        depths = sorted({run[name][0] for run in runs})
        cells = torch.tensor([run[name][1] for run in runs])  # [splits, columns], each vs no gate
        # by context: paired with one threshold on the same split (the splits differ more than the methods)
        paired = [cells[:, 0], *(cells[:, 1:] / cells[:, :1]).T]
        print(f"| {name} | {', '.join(map(str, depths))} | " + " | ".join(
            f"{column.median():.4f}x ({column.min():.4f}-{column.max():.4f})" for column in paired) + " |")
    # what the buckets choose, fitted on every record (the calibration's statistic)
    statistic, global_choice, _ = choose_gate(data["statistics"], data["path_ranks"], data["num_draft_tokens"], None,
                                              StepCosts(**data["step_costs"]))
    stat = data["statistics"][:, :, data["statistic_names"].index(statistic)]
    print(f"\nFitted on every record, {statistic}: one gate: depth {global_choice.depth}, "
          f"threshold {global_choice.threshold:.4f}")
    for c, context_name in enumerate(data["context_names"]):
        context = data["contexts"][:, c]
        if context_name == "category":
            buckets, names = context.long(), list(args.records)
        else:
            edges = torch.quantile(context[context >= 0], torch.tensor([1 / 3, 2 / 3]))
            buckets, _ = tercile_buckets(context, context)
            names = ["no history", f"< {edges[0]:.2f}", f"{edges[0]:.2f}-{edges[1]:.2f}", f">= {edges[1]:.2f}"]
        choices = {name: choose_sweet_spot(stat[buckets == b], data["path_ranks"][buckets == b],
                                           data["num_draft_tokens"], None, StepCosts(**data["step_costs"]))[0]
                   for b, name in enumerate(names) if (buckets == b).any()}
        print(f"by {context_name}: " + "; ".join(
            f"{name}: depth {choice.depth}, threshold {choice.threshold:.4f}, gated {choice.gated_fraction:.0%}"
            for name, choice in choices.items()))

if __name__ == "__main__":
    main()

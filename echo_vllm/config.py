"""The `method: echo` speculative config: parse, validate, and translate for vLLM.

Pure Python (no vLLM import), so every error case is testable in milliseconds and is
raised before vLLM reads a single weight.

Vocabulary (SGLang's, which the seed's tables use):
  steps                        maximum draft depth D (echo with a budget: the depth its trees
                               start at; they may grow to num_draft_tokens - 1 where bought)
  topk                         children per frontier node, and frontier width, K
  num_draft_tokens             verified nodes per request, the root (last committed token)
                               included, so a request verifies num_draft_tokens - 1 drafts
                               (at most what the tree `steps` deep holds, but for echo with a
                               budget, whose trees grow deeper)
  judge_depth / threshold      sparse confidence gate: after drafting depth d, a request whose
                               confidence is below the threshold stops growing ...
  remaining_num_draft_tokens   ... and is cut to this many verified nodes (root included)

Policies (echo_vllm.core.gating): `static` (EAGLE-3's fixed tree), `ddd` (stop when the
frontier's summed probability < threshold, checked after each judge depth, default every
depth), `opt_tree` (stop when one more depth adds < threshold expected accepted tokens),
`echo` (sparse gate at the judge depths, plus the batch's verification budget with `budget`
'auto'). `echo` is the default: `{"method": "echo", "model": HEAD}` runs ECHO. Its gate comes
from `judge_depth` + `threshold`, from a `calibration_file` (by default HEAD/calibration.json
when it exists, as `echo-vllm calibrate` writes it), or, with neither, from calibrating online
during the first `calibration_steps` verification steps; its tree shape from the options, the
calibration file, or else the seed's (SEED_TREE). `static` (or `steps` 1, a single draft) runs
a fixed tree: a chain with `topk` 1.

The candidate pool of an EAGLE-2-style expansion holds K nodes at depth 1 and K*K proposed
children at every further depth (each of the K frontier nodes proposes K), so
pool_size(D, K) = K + (D - 1) * K * K, e.g. pool_size(5, 8) = 264, pool_size(3, 1) = 3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from echo_vllm.calibration_file import CALIBRATED_KEYS, TREE_KEYS, read_calibration
from echo_vllm.core.gating import STATISTICS

METHOD = "echo"

# Largest number of draft tokens vLLM's rejection sampler accepts per request (MAX_SPEC_LEN).
MAX_DRAFT_TOKENS = 128
MAX_STEPS = 32
MAX_TOPK = 32
POLICIES = ("static", "ddd", "opt_tree", "echo")
# Verification steps an echo engine without a gate or calibration file spends calibrating
# its gate online (gating off meanwhile).
DEFAULT_CALIBRATION_STEPS = 256
# The calibration file echo takes from the head's directory when none is named.
CALIBRATION_BESIDE_HEAD = "calibration.json"
# Echo's tree where neither the options nor a calibration file give one: the seed's EAGLE-3
# tree (SGLang's steps 5, topk 8, with 32 verified nodes, the default num_draft_tokens of
# every tree that has as many); the budget decides how much of it a step verifies.
SEED_TREE = {"steps": 5, "topk": 8}
# A fixed tree's default: a chain of three drafts.
STATIC_TREE = {"steps": 3, "topk": 1}
DEFAULT_NUM_DRAFT_TOKENS = 32

# vLLM speculative-config keys passed through unchanged to vLLM's speculative config.
VLLM_PASSTHROUGH_KEYS = ("draft_tensor_parallel_size", "max_model_len", "enforce_eager", "disable_eagle_block_drop")

def pool_size(steps: int, topk: int) -> int:
    """Draft nodes an EAGLE-2-style expansion proposes: K at depth 1, K*K at each later depth."""
    return topk + (steps - 1) * topk * topk


@dataclasses.dataclass(frozen=True)
class EchoConfig:
    """Validated echo options. Build with `parse_echo_config`, never directly."""

    model: str
    steps: int
    topk: int
    num_draft_tokens: int
    judge_depth: tuple[int, ...]
    threshold: tuple[float, ...]
    remaining_num_draft_tokens: int | None
    policy: str
    gate_statistic: str
    budget: int | str | None
    calibration_file: str | None
    calibration_steps: int | None
    vllm_options: Mapping[str, Any]

    @property
    def max_draft_tokens(self) -> int:
        """Draft tokens verified per request per step (the root excluded)."""
        return self.num_draft_tokens - 1

    @property
    def max_depth(self) -> int:
        """The deepest a tree may grow: `steps`, but for echo spending a budget, which spends
        depth first: its trees start `steps` deep and may grow, where the budget buys the
        deeper nodes, to a chain of every draft (`num_draft_tokens - 1`, at most MAX_STEPS)."""
        if _grows_past_steps(self.policy, self.budget):
            return max(self.steps, min(self.max_draft_tokens, MAX_STEPS))
        return self.steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form; `parse_echo_config(cfg.to_dict())` gives `cfg` back."""
        out = dataclasses.asdict(self)
        vllm_options = out.pop("vllm_options")
        out["judge_depth"] = list(self.judge_depth)
        out["threshold"] = list(self.threshold)
        if self.policy != "echo":
            del out["gate_statistic"]
        if self.calibration_file is not None:  # the file decides these again on reading
            for key in CALIBRATED_KEYS:
                del out[key]
        # options a policy does not read stay out (they would be refused)
        out = {key: value for key, value in out.items() if value not in (None, [])}
        return {"method": METHOD, **out, **vllm_options}


ECHO_KEYS = tuple(f.name for f in dataclasses.fields(EchoConfig) if f.name != "vllm_options")
VALID_KEYS = ("method", *ECHO_KEYS, *VLLM_PASSTHROUGH_KEYS)


def _fail(message: str) -> ValueError:
    return ValueError(f"echo-vllm: speculative_config {message}")


def _int(options: Mapping[str, Any], key: str, default: Any, low: int, high: int) -> Any:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"option '{key}' must be an integer, got {value!r}")
    if not low <= value <= high:
        raise _fail(f"option '{key}' must be in [{low}, {high}], got {value}")
    return value


def _int_list(options: Mapping[str, Any], key: str, low: int, high: int) -> tuple[int, ...]:
    value = options.get(key)
    if value is None:
        return ()
    values = value if isinstance(value, (list, tuple)) else [value]
    out = tuple(_int({key: v}, key, None, low, high) for v in values)
    if list(out) != sorted(set(out)):
        raise _fail(f"option '{key}' must list distinct depths in increasing order, got {value!r}")
    return out


def _float_list(options: Mapping[str, Any], key: str, low: float, high: float) -> tuple[float, ...]:
    value = options.get(key)
    if value is None:
        return ()
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(f"option '{key}' must be a number or a list of numbers, got {value!r}")
        if not low <= v <= high:
            raise _fail(f"option '{key}' must be in [{low}, {high}], got {v}")
    return tuple(float(v) for v in values)


def _choice(options: Mapping[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = options.get(key, default)
    if value not in choices:
        raise _fail(f"option '{key}' must be one of {list(choices)}, got {value!r}")
    return value


def _grows_past_steps(policy: str, budget: int | str | None) -> bool:
    """Whether trees may grow past `steps` (EchoConfig.max_depth): echo spending a budget,
    which spends depth first."""
    return policy == "echo" and budget is not None


def _budget(options: Mapping[str, Any], default: str | None) -> int | str | None:
    value = options.get("budget", default)
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"option 'budget' must be 'auto' or an integer >= 1, got {value!r}")
    return value


def _path(options: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = options.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(f"option '{key}' must be a path (string), got {value!r}")
    return value


def parse_echo_config(options: Mapping[str, Any]) -> EchoConfig:
    """Validate a `{"method": "echo", ...}` mapping (CLI JSON or `LLM(speculative_config=)`).

    Raises ValueError naming the offending key and value for: unknown keys (the valid ones
    listed), wrong types, out-of-range values, inconsistent combinations, and options whose
    behaviour is not supported yet. Dashes in keys are read as underscores, as vLLM does.
    """
    options = _checked_keys({str(k).replace("-", "_"): v for k, v in options.items()})
    options = _with_calibration_beside_head(options)
    if options.get("calibration_file") is not None:
        options = _with_calibration(options)
    policy = _choice(options, "policy", "static" if options.get("steps") == 1 else "echo", POLICIES)
    budget = _budget(options, "auto" if policy == "echo" else None)
    steps, topk, num_draft_tokens = _tree_shape(options, SEED_TREE if policy == "echo" else STATIC_TREE,
                                                _grows_past_steps(policy, budget))
    judge_depth, threshold, remaining = _gate(options, policy, steps, num_draft_tokens)
    return EchoConfig(
        model=_path(options, "model", required=True),
        steps=steps,
        topk=topk,
        num_draft_tokens=num_draft_tokens,
        judge_depth=judge_depth,
        threshold=threshold,
        remaining_num_draft_tokens=remaining,
        policy=policy,
        gate_statistic=_choice(options, "gate_statistic", "frontier_sum", STATISTICS),
        budget=budget,
        calibration_file=_path(options, "calibration_file", required=False),
        calibration_steps=_int(options, "calibration_steps",
                               DEFAULT_CALIBRATION_STEPS if policy == "echo" and not judge_depth else None,
                               1, 1_000_000),
        vllm_options={k: options[k] for k in VLLM_PASSTHROUGH_KEYS if k in options},
    )


def _checked_keys(options: dict[str, Any]) -> dict[str, Any]:
    """The options, once the method is echo's, every key is known and the head is named."""
    if options.get("method") != METHOD:
        raise _fail(f"'method' must be {METHOD!r}, got {options.get('method')!r}")
    unknown = sorted(set(options) - set(VALID_KEYS))
    if unknown:
        hint = ""
        if "num_speculative_tokens" in unknown:
            hint = " (echo sizes its drafts with 'steps', 'topk' and 'num_draft_tokens')"
        raise _fail(
            f"has unknown option(s) {unknown}{hint}; valid options for method 'echo': "
            f"{sorted(VALID_KEYS)}"
        )
    if options.get("model") is None:
        raise _fail("option 'model' is required: the local directory of an EAGLE-3 head trained for "
                    "this target, e.g. {\"method\": \"echo\", \"model\": \"heads/smollm2-135m-eagle3\"}")
    return options


def _tree_shape(options: Mapping[str, Any], default_tree: Mapping[str, int], grows: bool) -> tuple[int, int, int]:
    """(steps, topk, num_draft_tokens), the draft count checked against what the tree can hold:
    the tree `steps` deep, or, for trees that grow past it (`grows`), any count. The default
    count fits the tree `steps` deep."""
    steps = _int(options, "steps", default_tree["steps"], 1, MAX_STEPS)
    topk = _int(options, "topk", default_tree["topk"], 1, MAX_TOPK)
    start_nodes = 1 + min(pool_size(steps, topk), MAX_DRAFT_TOKENS)
    max_nodes = 1 + MAX_DRAFT_TOKENS if grows else start_nodes
    if options.get("num_draft_tokens") is not None:
        # Checked against the tree shape first: that is the mistake users make.
        _int(options, "num_draft_tokens", None, 2, 1 + MAX_DRAFT_TOKENS)
        if options["num_draft_tokens"] > max_nodes:
            raise _fail(
                f"option 'num_draft_tokens' = {options['num_draft_tokens']} is larger than a "
                f"tree with steps = {steps} and topk = {topk} can produce: at most {max_nodes} "
                f"nodes (the root plus {max_nodes - 1} drafts)"
            )
    num_draft_tokens = _int(options, "num_draft_tokens", min(start_nodes, DEFAULT_NUM_DRAFT_TOKENS), 2, max_nodes)
    return steps, topk, num_draft_tokens


def _gate(options: Mapping[str, Any], policy: str, steps: int,
          num_draft_tokens: int) -> tuple[tuple[int, ...], tuple[float, ...], int | None]:
    """(judge_depth, threshold, remaining_num_draft_tokens) as the policy reads them."""
    judge_depth = _int_list(options, "judge_depth", 1, max(1, steps - 1))
    _check_policy_keys(options, policy, steps)
    if policy == "ddd" and not judge_depth:
        judge_depth = tuple(range(1, steps))  # DDD checks after every depth
    threshold = _float_list(options, "threshold", 0.0, 1.0)
    if policy in ("ddd", "opt_tree") and len(threshold) != 1:
        raise _fail(f"option 'threshold' must be one number for policy '{policy}', got {options.get('threshold')!r}")
    if policy == "echo" and len(threshold) != len(judge_depth):
        raise _fail(
            f"option 'threshold' must give one value per judge depth {list(judge_depth)}, "
            f"got {list(threshold)}"
        )
    # a gated request keeps by default its best path down to the first judge depth
    # (online calibration picks it with the judge depth when none is given)
    default_remaining = min(judge_depth[0] + 1, num_draft_tokens) if policy == "echo" and judge_depth else None
    remaining = _int(options, "remaining_num_draft_tokens", default_remaining, 1, num_draft_tokens)
    return judge_depth, threshold, remaining


# Which options each policy reads; any other policy refuses them rather than ignore them.
POLICY_OPTIONS = {
    "calibration_file": ("echo",),
    "calibration_steps": ("echo",),
    "judge_depth": ("ddd", "echo"),
    "threshold": ("ddd", "opt_tree", "echo"),
    "remaining_num_draft_tokens": ("echo",),
    "gate_statistic": ("echo",),
    "budget": ("echo",),
}


def _check_policy_keys(options: Mapping[str, Any], policy: str, steps: int) -> None:
    for key, policies in POLICY_OPTIONS.items():
        if options.get(key) is not None and policy not in policies:
            raise _fail(f"option '{key}' is not used by policy '{policy}' (only by {list(policies)})")
    if policy != "static" and steps < 2:
        raise _fail(f"policy '{policy}' decides between depths and needs steps >= 2, got steps = {steps}")
    required = {"ddd": ("threshold",), "opt_tree": ("threshold",)}
    if policy == "echo" and (options.get("judge_depth") is not None or options.get("threshold") is not None):
        required["echo"] = ("judge_depth", "threshold")  # a gate given by hand is given whole
    for key in required.get(policy, ()):
        if options.get(key) is None:
            raise _fail(f"policy '{policy}' needs option '{key}'")
    if options.get("calibration_steps") is not None and options.get("judge_depth") is not None:
        raise _fail("option 'calibration_steps' calibrates the gate online; it cannot be combined "
                    "with a gate given by 'judge_depth' / 'threshold' or 'calibration_file'")


def _with_calibration_beside_head(options: dict[str, Any]) -> dict[str, Any]:
    """The options with HEAD/calibration.json as their calibration_file, when it exists and
    the options leave the gate to echo: policy echo, no gate, no online calibration, no file
    named, and no tree shape other than the file's (a file measured on another tree would
    not describe this one: echo calibrates online instead)."""
    model = options.get("model")
    if options.get("policy", "echo") != "echo" or options.get("steps") == 1 or not isinstance(model, str):
        return options
    if any(options.get(key) is not None for key in (*CALIBRATED_KEYS, "calibration_file", "calibration_steps")):
        return options
    path = Path(model) / CALIBRATION_BESIDE_HEAD
    if not path.is_file():
        return options
    content = read_calibration(str(path))
    if any(options.get(key) is not None and options[key] != content.get(key) for key in TREE_KEYS):
        return options
    return {**options, "calibration_file": str(path)}


def describe_calibration(config: EchoConfig) -> str:
    """Where the echo gate comes from, for the start-up log."""
    if config.policy != "echo":
        return f"policy {config.policy}: no gate"
    if config.calibration_file is not None:
        beside = Path(config.calibration_file) == Path(config.model) / CALIBRATION_BESIDE_HEAD
        return (f"gate from calibration file {config.calibration_file}" + (" (found beside the head)" if beside else "")
                + f": {config.gate_statistic} at depth {list(config.judge_depth)}, threshold {list(config.threshold)}")
    if config.calibration_steps is not None:
        return (f"no calibration file ({Path(config.model) / CALIBRATION_BESIDE_HEAD} not found, or for another "
                f"tree): calibrating the gate online over the first {config.calibration_steps} verification steps")
    return f"gate given: {config.gate_statistic} at depth {list(config.judge_depth)}, threshold {list(config.threshold)}"


def _with_calibration(options: dict[str, Any]) -> dict[str, Any]:
    """The options with the gate a calibration file chose (judge depth, threshold,
    statistic, remaining nodes). The file decides those; the tree it was measured on must
    be the configured one."""
    path = _path(options, "calibration_file", required=True)
    given = [key for key in CALIBRATED_KEYS if options.get(key) is not None]
    if given:
        raise _fail(f"option(s) {given} are decided by calibration_file {path!r}; remove them or the file")
    content = read_calibration(path)
    for key in TREE_KEYS:
        if key in options and options[key] != content[key]:
            raise _fail(
                f"option '{key}' = {options[key]!r} differs from {content[key]!r} in calibration_file "
                f"{path!r}; calibrate again with this tree or use the file's value"
            )
    return {**options, **{key: content[key] for key in (*TREE_KEYS, *CALIBRATED_KEYS)}}


def to_vllm_speculative_config(config: EchoConfig) -> dict[str, Any]:
    """The vLLM `speculative_config` echo runs on: the EAGLE-3 machinery with echo's draft count.

    A request verifies num_draft_tokens - 1 drafts, so vLLM's per-request draft slots
    (num_speculative_tokens) are sized to that. The padded drafter batch is off: its input
    prep assumes rejected drafts sit after the accepted ones, true for chains only.

    A prefix-cache hit keeps its last block. vLLM's EAGLE methods drop it and compute it
    again, so that the draft KV of its last position is the one this request's next token
    gives. Echo's draft KV feeds drafting only, never what is committed, so one position's
    draft KV from another request's next token costs at most a little acceptance. The
    dropped block costs a block of target compute per hit, on every prompt that shares a
    system prompt or a chat's earlier turns: served at 64 concurrent requests on this CPU,
    about a tenth of a prefill-heavy phase's time.
    """
    return {
        "method": "eagle3",
        "model": config.model,
        "num_speculative_tokens": config.max_draft_tokens,
        "disable_padded_drafter_batch": True,
        "disable_eagle_block_drop": True,
        **config.vllm_options,
    }

"""The target-pass cost model: measured once per (model, machine, vLLM, sizes), read from the
cache afterwards (the runner's measuring loop driven by fake pass times, no engine)."""

import pytest

from echo_vllm import cost_cache, runner
from echo_vllm.cost_cache import cost_key, cost_path, read_cost, write_cost


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_VLLM_CACHE", str(tmp_path))
    return tmp_path


def test_a_cost_is_read_back_only_for_its_own_key(cache):
    key = cost_key(model="/m", sizes=[1, 2, 4])
    path = cost_path(key)
    assert path.parent == cache / "cost_models"
    assert read_cost(path, key) is None
    write_cost(path, key, [1, 2, 4, 1, 2, 4], [0.1, 0.2, 0.4, 0.1, 0.2, 0.3])
    assert read_cost(path, key) == ([1, 2, 4, 1, 2, 4], [0.1, 0.2, 0.4, 0.1, 0.2, 0.3])
    assert read_cost(path, cost_key(model="/m", sizes=[1, 2, 4, 8])) is None
    path.write_text("{not json")
    assert read_cost(path, key) is None


@pytest.mark.parametrize("cpuinfo, name, isa", [
    ("model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n", "AMD EPYC", "avx2"),
    ("model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512cd avx512_bf16\n", "AMD EPYC", "avx2 avx512f avx512_bf16"),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16\n", None, "asimd sve bf16"),
    ("processor\t: 0\nflags\t\t: fpu sse\n", None, "none"),
    ("processor\t: 0\n", None, "unknown"),
])
def test_the_machine_is_named_with_its_vector_extensions(tmp_path, monkeypatch, cpuinfo, name, isa):
    """Two machines named "AMD EPYC", with AVX-512 and without, keep apart in the cache."""
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(cost_cache, "CPUINFO", tmp_path / "cpuinfo")
    assert cost_cache.cpu_isa() == isa
    assert cost_cache.cpu_name() == (name or cost_cache.platform.processor() or cost_cache.platform.machine())


def test_keys_differ_by_what_the_times_depend_on():
    assert cost_path(cost_key(model="/m", dtype="float32")) != cost_path(cost_key(model="/m", dtype="bfloat16"))
    assert cost_key(model="/m")["format"] == cost_cache.FORMAT


class FakeRunner(runner.EchoRunnerMixin):
    """The mixin's measuring methods over a fake target whose pass costs 1 ms per token
    beyond 8 tokens (compute-bound from 16 on) and 8 ms below."""

    def __init__(self):  # no vLLM runner underneath
        self.passes = []
        self.echo_policy = type("Policy", (), {"cost_model": None})()

    def _time_target_pass(self, num_tokens):
        self.passes.append(num_tokens)
        return 0.001 * max(num_tokens, 8)

    def _cost_key(self, sizes):
        return cost_key(model="/fake", sizes=sizes)

    scheduler_config = type("Scheduler", (), {"max_num_batched_tokens": 2048, "max_num_seqs": 16})()
    echo_config = type("Echo", (), {"num_draft_tokens": 32})()


def test_measured_until_compute_bound_then_read_from_the_cache(monkeypatch):
    monkeypatch.setattr(runner, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(runner, "same_on_every_rank", lambda values: values)
    first = FakeRunner()
    cost = first.measure_target_cost(repeats=3)
    # every size to 16, then 32 (16 -> 32 and 8 -> 16 doubled the time), not up to
    # min(2048, 16 * 32) = 512
    sizes = [*range(1, 17), 32]
    assert cost.to_dict()["tokens"] == sizes
    assert first.passes == [1] + sizes * 3
    again = FakeRunner()
    assert again.measure_target_cost().to_dict() == cost.to_dict() and again.passes == []
    assert again.echo_policy.cost_model is not None

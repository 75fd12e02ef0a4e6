"""The soak's request mix and its clients (without a server)."""

import asyncio

import echo_vllm.soak as soak_module
from echo_vllm.soak import MIN_CANCELLED_TOKENS, Outcome, make_requests, problems

TEXTS = ["Tell me a story.", "def f(x):", "What is 2 + 2?"]
POOL = list(range(5000))


def test_the_mix_is_seeded_and_covers_what_the_soak_must_exercise():
    requests = make_requests(400, TEXTS, POOL, max_model_len=1024, cancel_share=0.2, seed=3)
    assert requests == make_requests(400, TEXTS, POOL, max_model_len=1024, cancel_share=0.2, seed=3)
    cancelled = [r for r in requests if r.cancel_after_chunks is not None]
    assert 50 < len(cancelled) < 110 and all(r.stream for r in cancelled)
    # still running when the client closes the stream after at most 6 chunks
    assert all(r.params["max_tokens"] >= MIN_CANCELLED_TOKENS and "stop" not in r.params
               and r.params["extra_body"]["ignore_eos"] for r in cancelled)
    long = [r for r in requests if isinstance(r.prompt, list)]
    assert long and all(len(r.prompt) + r.params["max_tokens"] == 1024 for r in long)  # answers fill the context
    sampled = [r for r in requests if not r.greedy]
    assert {r.params["n"] for r in sampled} == {1, 2, 3}
    assert {r.params["extra_body"]["top_k"] for r in sampled} == {-1, 1, 8, 64}
    assert {r.params["top_p"] for r in sampled} == {1.0, 0.9, 0.5}
    assert any("seed" in r.params for r in sampled) and any("seed" not in r.params for r in sampled)
    assert any("stop" in r.params for r in requests if r.greedy)
    assert any(r.stream for r in requests if r.greedy) and any(not r.stream for r in requests if r.greedy)


def test_completion_needs_every_choice_finished():
    assert Outcome(texts={0: "a", 1: "b"}, finish_reasons={0: "stop", 1: "length"}).completed(2)
    assert not Outcome(texts={0: "a"}, finish_reasons={0: "stop"}).completed(2)
    assert not Outcome(finish_reasons={0: None}).completed(1)
    assert not Outcome(finish_reasons={0: "stop"}, cancelled=True).completed(1)
    assert not Outcome(finish_reasons={0: "stop"}, error="APIError: boom").completed(1)


def test_problems_name_what_failed():
    report = {"server_alive_at_end": True, "crash_log_lines": [], "incomplete": [], "errors": [],
              "greedy_mismatches": [], "rss_mib": {"after_half": 1000.0, "end": 1040.0}}
    assert problems(report) == []
    report.update(greedy_mismatches=[4, 9], incomplete=[3], rss_mib={"after_half": 1000.0, "end": 1100.0},
                  server_alive_at_end=False)
    found = problems(report)
    assert len(found) == 4
    assert "2 greedy answers differ" in found[2] and "1000 -> 1100 MiB" in found[3]


def test_every_client_stays_busy_and_memory_is_sampled_as_each_tenth_completes(monkeypatch):
    running, most_running, samples = 0, 0, []

    async def fake_one(client, model, request):
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        await asyncio.sleep(0.001 * (request.index % 7))
        running -= 1
        return Outcome(texts={0: str(request.index)}, finish_reasons={0: "stop"})

    class Bar:
        def update(self, n):
            pass

    monkeypatch.setattr(soak_module, "_one", fake_one)
    requests = make_requests(40, TEXTS, POOL, max_model_len=1024, cancel_share=0.2, seed=1)
    outcomes = asyncio.run(soak_module._run("http://127.0.0.1:1", "m", requests, 12, Bar(),
                                            lambda: samples.append(running)))
    assert sorted(outcomes) == list(range(40))
    assert most_running == 12  # no pause between tenths: the load stays at the clients asked for
    assert len(samples) == 10 and max(samples) > 0  # sampled while others still run

"""Draft vocabulary, labels, batching and the loss on hand-made data."""

import torch

from echo_vllm.training.data import Sample, Sequences, draft_vocabulary
from echo_vllm.training.train import TrainConfig, collate, make_batches


def test_draft_vocabulary_keeps_frequent_response_tokens_with_offsets():
    samples = [Sample([9, 9, 9], [1, 1, 1, 5, 5, 7]), Sample([9], [5, 2])]
    d2t, t2d, coverage = draft_vocabulary(samples, vocab_size=10, draft_vocab_size=2)
    # responses: 1 x3, 5 x3, 7, 2 -> draft ids 0, 1 are target ids 1 and 5
    assert t2d.nonzero().flatten().tolist() == [1, 5]
    assert (torch.arange(2) + d2t).tolist() == [1, 5]  # vLLM: target id = draft id + d2t
    assert coverage == 6 / 8


def test_labels_are_response_tokens_two_plus_step_ahead():
    # one sequence: prompt [10, 11, 12], response [13, 14, 15, 16]
    data = Sequences(tokens=torch.tensor([10, 11, 12, 13, 14, 15, 16]),
                     features=torch.zeros(7, 6, dtype=torch.bfloat16),
                     offsets=torch.tensor([0, 7]), prompt_lens=torch.tensor([3]))
    t2d_index = torch.full((20,), -100)
    t2d_index[13:17] = torch.tensor([0, 1, 2, 3])  # response tokens 13..16 are draft ids 0..3
    batch = collate(data, [0], t2d_index, ttt_steps=2)
    # step 0, row t predicts token t+2: rows 1..4 -> tokens 13..16
    assert batch.labels[0, 0].tolist() == [-100, 0, 1, 2, 3, -100, -100]
    # step 1, row t predicts token t+3: rows 0..3 -> tokens 13..16
    assert batch.labels[1, 0].tolist() == [0, 1, 2, 3, -100, -100, -100]


def test_batches_respect_the_token_budget_and_cover_everything():
    lengths = [5, 9, 3, 12, 7, 4]
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    data = Sequences(torch.zeros(int(offsets[-1]), dtype=torch.int64),
                     torch.zeros(int(offsets[-1]), 2, dtype=torch.bfloat16), offsets,
                     torch.ones(len(lengths), dtype=torch.int64))
    config = TrainConfig(batch_tokens=20)
    batches = make_batches(data, list(range(6)), config, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(max(lengths[i] for i in b) * len(b) <= 20 for b in batches)


def synthetic_sequences(n=12, length=24, vocab=40, seed=0):
    """Sequences whose next token is a fixed function of the current one: learnable."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        token = int(torch.randint(0, vocab, (1,), generator=g))
        row = []
        for _ in range(length):
            row.append(token)
            token = (token * 7 + 3) % vocab
        rows.append(row)
    tokens = torch.tensor([t for r in rows for t in r])
    features = torch.nn.functional.one_hot(tokens, 64).float().repeat(1, 3)[:, :192].to(torch.bfloat16)
    return Sequences(tokens, features, torch.arange(0, n * length + 1, length), torch.full((n,), 4))


def tiny_head():
    from echo_vllm.draft_head import head_config
    from echo_vllm.training.head import Eagle3Head

    target = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=40, max_position_embeddings=128,
                  rms_norm_eps=1e-5, rope_theta=10000.0)
    torch.manual_seed(0)
    return Eagle3Head(head_config(target, draft_vocab_size=40, aux_layer_ids=(0, 1, 2)), torch.randn(40, 64))


def test_training_learns_and_an_interrupted_run_resumes_to_the_same_head(tmp_path, monkeypatch):
    from echo_vllm.training import train as train_module

    data = synthetic_sequences()
    t2d_index = torch.arange(40)
    config = TrainConfig(epochs=6, batch_tokens=96, lr=3e-3, checkpoint_every=1, val_fraction=0.2)

    straight = tiny_head()
    summary = train_module.train(straight, data, t2d_index, config, tmp_path / "straight.pt")
    history = summary["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_top1_by_depth"][0] > history[0]["val_top1_by_depth"][0]

    interrupted = tiny_head()
    calls = {"n": 0}
    original = train_module.batch_loss

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "batch_loss", failing)
    try:
        train_module.train(interrupted, data, t2d_index, config, tmp_path / "resumed.pt")
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(train_module, "batch_loss", original)
    resumed = tiny_head()
    assert train_module.train(resumed, data, t2d_index, config, tmp_path / "resumed.pt")["history"] == history
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)

"""Draft vocabulary, labels, batching and the loss on hand-made data."""

import torch

from echo_vllm.training.data import Sample, Sequences, draft_vocabulary
from echo_vllm.training.train import TrainConfig, batch_loss, collate, make_batches


def sequences(tokens, prompt_lens, offsets, features=None, teacher_ids=None, teacher_probs=None):
    """Sequences from literal data; by default the teacher is sure of the next token."""
    tokens = torch.as_tensor(tokens)
    if teacher_ids is None:
        teacher_ids = torch.stack([tokens.roll(-1), torch.zeros_like(tokens)], dim=1)
        teacher_probs = torch.tensor([[1.0, 0.0]]).expand(len(tokens), 2)
    return Sequences(tokens=tokens,
                     features=torch.zeros(len(tokens), 6, dtype=torch.bfloat16) if features is None else features,
                     teacher_ids=torch.as_tensor(teacher_ids, dtype=torch.int32),
                     teacher_probs=torch.as_tensor(teacher_probs, dtype=torch.float16),
                     offsets=torch.as_tensor(offsets), prompt_lens=torch.as_tensor(prompt_lens))


def test_draft_vocabulary_keeps_frequent_response_tokens_with_offsets():
    samples = [Sample([9, 9, 9], [1, 1, 1, 5, 5, 7]), Sample([9], [5, 2])]
    d2t, t2d, coverage = draft_vocabulary(samples, vocab_size=10, draft_vocab_size=2)
    # responses: 1 x3, 5 x3, 7, 2 -> draft ids 0, 1 are target ids 1 and 5
    assert t2d.nonzero().flatten().tolist() == [1, 5]
    assert (torch.arange(2) + d2t).tolist() == [1, 5]  # vLLM: target id = draft id + d2t
    assert coverage == 6 / 8


def test_labels_are_the_targets_choice_two_plus_step_ahead_on_response_tokens():
    # one sequence: prompt [10, 11, 12], response [13, 14, 15, 16]; at each position the
    # target's first choice is the next token, its second 16 (draft id 3) or 19 (no draft id)
    tokens = [10, 11, 12, 13, 14, 15, 16]
    teacher_ids = [[11, 16], [12, 19], [13, 16], [14, 19], [15, 16], [16, 19], [2, 16]]
    teacher_probs = [[0.75, 0.25], [0.5, 0.5]] * 3 + [[1.0, 0.0]]
    data = sequences(tokens, [3], [0, 7], teacher_ids=teacher_ids, teacher_probs=teacher_probs)
    t2d_index = torch.full((20,), -100)
    t2d_index[13:17] = torch.tensor([0, 1, 2, 3])  # response tokens 13..16 are draft ids 0..3
    batch = collate(data, [0], t2d_index, ttt_steps=2)
    # step 0, row t learns position t+1's choice (token t+2): rows 1..4 -> tokens 13..16
    assert batch.labels[0, 0].tolist() == [-100, 0, 1, 2, 3, -100, -100]
    # step 1, row t predicts token t+3: rows 0..3 -> tokens 13..16
    assert batch.labels[1, 0].tolist() == [0, 1, 2, 3, -100, -100, -100]
    # the distribution: second choices outside the draft vocabulary drop out, the rest renormalized
    assert batch.soft_ids[0, 0, 1].tolist() == [0, 3]
    torch.testing.assert_close(batch.soft_probs[0, 0, 1], torch.tensor([0.75, 0.25]))
    assert batch.soft_ids[0, 0, 2].tolist() == [1, 0]
    torch.testing.assert_close(batch.soft_probs[0, 0, 2], torch.tensor([1.0, 0.0]))
    assert batch.soft_probs[0, 0, [0, 5, 6]].sum() == 0  # prompt rows and rows past the end learn nothing
    assert batch.soft_probs[1, 0, 4:].sum() == 0


def test_the_kl_loss_to_a_sure_target_is_the_hard_loss():
    data = synthetic_sequences()
    batch = collate(data, [0, 1, 2], torch.arange(40), ttt_steps=3)
    head = tiny_head()
    kl, kl_tallies = batch_loss(head, batch, TrainConfig(loss="kl", precision="fp32", ttt_steps=3))
    hard, hard_tallies = batch_loss(head, batch, TrainConfig(loss="hard", precision="fp32", ttt_steps=3))
    torch.testing.assert_close(kl, hard)
    assert kl_tallies == hard_tallies


def test_a_spread_target_weighs_each_of_its_tokens():
    # the target gives the next token 0.5 and token 0 0.5: the loss is the mean of both
    # tokens' cross entropies
    data = synthetic_sequences()
    data = sequences(data.tokens, data.prompt_lens, data.offsets, data.features,
                     torch.stack([data.teacher_ids[:, 0], torch.zeros_like(data.teacher_ids[:, 0])], 1),
                     torch.full((len(data.tokens), 2), 0.5))
    batch = collate(data, [0], torch.arange(40), ttt_steps=1)
    head = tiny_head()
    config = TrainConfig(loss="kl", precision="fp32", ttt_steps=1)
    kl, _ = batch_loss(head, batch, config)
    logits = head(batch.features, batch.tokens, 1)[0][0]
    rows = batch.labels[0, 0] != -100
    hard = torch.nn.functional.cross_entropy(logits[rows], batch.labels[0, 0][rows])
    zero = torch.nn.functional.cross_entropy(logits[rows], torch.zeros(int(rows.sum()), dtype=torch.int64))
    torch.testing.assert_close(kl, (hard + zero) / 2)


def test_unknown_loss_and_precision_are_refused():
    import pytest

    with pytest.raises(ValueError, match="loss 'mse'"):
        TrainConfig(loss="mse")
    with pytest.raises(ValueError, match="precision 'fp16'"):
        TrainConfig(precision="fp16")


def test_batches_respect_the_token_budget_and_cover_everything():
    lengths = [5, 9, 3, 12, 7, 4]
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    data = sequences(torch.zeros(int(offsets[-1]), dtype=torch.int64), torch.ones(len(lengths), dtype=torch.int64),
                     offsets)
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
    return sequences(tokens, torch.full((n,), 4), torch.arange(0, n * length + 1, length), features)


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

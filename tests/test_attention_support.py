"""Every attention feature echo's tree path lacks is refused by name, with what to do; a plain
Llama config passes. Small stand-ins for vLLM's config, layer and KV-cache objects."""

from types import SimpleNamespace

import pytest

from echo_vllm import attention_support as support
from echo_vllm.attention_support import refuse, unsupported_attention_features


def model_config(window=None, soft_cap=None, alibi=False, mrope=False):
    return SimpleNamespace(get_sliding_window=lambda: window, uses_alibi=alibi, uses_mrope=mrope,
                           hf_text_config=SimpleNamespace(attn_logit_softcapping=soft_cap))


def vllm_config(model=None, cache_dtype="auto", dcp=1):
    return SimpleNamespace(model_config=model or model_config(),
                           parallel_config=SimpleNamespace(decode_context_parallel_size=dcp),
                           cache_config=SimpleNamespace(cache_dtype=cache_dtype))


def layer(sliding_window=None, has_sink=False, kv_cache_dtype="auto", soft_cap=0, alibi_slopes=None):
    """A vLLM Attention layer as echo reads it (FlashAttention's impl: soft cap 0 = none)."""
    return SimpleNamespace(sliding_window=sliding_window, has_sink=has_sink, kv_cache_dtype=kv_cache_dtype,
                           impl=SimpleNamespace(logits_soft_cap=soft_cap, alibi_slopes=alibi_slopes))


def kv_cache(*block_sizes):
    return SimpleNamespace(kv_cache_groups=[SimpleNamespace(kv_cache_spec=SimpleNamespace(block_size=b))
                                            for b in block_sizes])


def plain_llama_layers():
    return {f"model.layers.{i}.self_attn.attn": layer() for i in range(2)}


def features(found):
    return [f.feature for f in found]


def test_a_plain_llama_is_accepted():
    found = unsupported_attention_features(vllm_config(), plain_llama_layers(), kv_cache(16), [16])
    assert found == []
    refuse(found, RuntimeError)  # raises nothing


@pytest.mark.parametrize("config, feature, what_to_do", [
    (vllm_config(model_config(window=4096)), support.SLIDING_WINDOW, "disable_sliding_window=True"),
    (vllm_config(model_config(soft_cap=50.0)), support.SOFT_CAP, "without method 'echo'"),
    (vllm_config(model_config(alibi=True)), support.ALIBI, "without method 'echo'"),
    (vllm_config(model_config(mrope=True)), support.MROPE, "without method 'echo'"),
    (vllm_config(cache_dtype="fp8"), support.QUANTIZED_KV, "kv_cache_dtype 'auto'"),
    (vllm_config(dcp=2), support.DCP, "set it to 1"),
], ids=["sliding_window", "soft_cap", "alibi", "mrope", "fp8_kv_cache", "dcp"])
def test_each_config_feature_is_refused_by_name(config, feature, what_to_do):
    found = unsupported_attention_features(config)
    assert features(found) == [feature]
    with pytest.raises(ValueError, match="method 'echo' verifies draft trees with plain attention") as error:
        refuse(found, ValueError)
    assert feature in str(error.value) and what_to_do in str(error.value)


@pytest.mark.parametrize("odd_layer, feature", [
    (layer(sliding_window=512), support.SLIDING_WINDOW),
    (layer(soft_cap=30.0), support.SOFT_CAP),
    (layer(has_sink=True), support.SINKS),
    (layer(alibi_slopes=[0.5, 0.25]), support.ALIBI),
    (layer(kv_cache_dtype="fp8_e4m3"), support.QUANTIZED_KV),
], ids=["sliding_window", "soft_cap", "sinks", "alibi", "fp8_kv_cache"])
def test_each_layer_feature_is_refused_naming_a_layer(odd_layer, feature):
    layers = {**plain_llama_layers(), "model.layers.2.self_attn.attn": odd_layer}
    found = unsupported_attention_features(vllm_config(), layers, kv_cache(16), [16])
    assert [str(f) for f in found] == [
        f"{feature} (1 of 3 attention layers, e.g. model.layers.2.self_attn.attn): {found[0].what_to_do}"]


def test_several_kv_cache_groups_are_refused():
    found = unsupported_attention_features(vllm_config(), plain_llama_layers(), kv_cache(16, 16), [16, 16])
    assert features(found) == [support.KV_GROUPS]
    assert found[0].found == "2 groups: layers of different attention kinds or shapes"


def test_a_kernel_block_size_other_than_the_managers_is_refused():
    found = unsupported_attention_features(vllm_config(), plain_llama_layers(), kv_cache(32), [16])
    assert [str(f) for f in found] == [
        "a kernel block size other than the KV manager's (kernel 16, KV manager 32): set block_size=16"]


def test_a_feature_seen_in_the_config_and_the_layers_is_named_once():
    layers = {"model.layers.0.self_attn.attn": layer(sliding_window=4096)}
    found = unsupported_attention_features(vllm_config(model_config(window=4096)), layers, kv_cache(16), [16])
    assert [str(f) for f in found] == [
        "sliding window (4096 tokens): set disable_sliding_window=True (it caps max_model_len at the window) "
        "or serve this model without method 'echo'"]


def test_every_feature_is_listed_in_one_error():
    config = vllm_config(model_config(window=8, alibi=True), cache_dtype="fp8", dcp=2)
    with pytest.raises(RuntimeError) as error:
        refuse(unsupported_attention_features(config), RuntimeError)
    message = str(error.value)
    for feature in (support.SLIDING_WINDOW, support.ALIBI, support.QUANTIZED_KV, support.DCP):
        assert feature in message

"""`method: echo` through vLLM's own entry points, up to the built config (no engine started)."""

import json
import pickle
from importlib.metadata import entry_points

import pytest
from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser

from echo_vllm import plugin
from echo_vllm.config import parse_echo_config
from echo_vllm.scheduler_patches import registry


def engine_config(target, **speculative):
    args = EngineArgs(model=target, dtype="float32", skip_tokenizer_init=True,
                      max_model_len=1024, speculative_config={"method": "echo", **speculative})
    return args.create_engine_config()


def test_entry_point_is_registered():
    (echo,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "echo"]
    assert echo.value == "echo_vllm.plugin:register"
    assert echo.load() is plugin.register


def test_register_is_idempotent():
    plugin.register()
    plugin.register()
    assert all(registry.is_applied(p) for p in registry.all_patches())


def test_register_refuses_another_vllm(monkeypatch):
    monkeypatch.setattr("vllm.__version__", "0.33.1")
    with pytest.raises(RuntimeError, match=r"0\.32\.\*.*0\.33\.1"):
        plugin.register()


def test_echo_config_becomes_eagle3_with_echo_worker(tiny_target, tiny_head):
    config = engine_config(tiny_target, model=tiny_head, steps=5, num_draft_tokens=4)
    spec = config.speculative_config
    assert (spec.method, spec.num_speculative_tokens) == ("eagle3", 3)
    assert config.parallel_config.worker_cls == "echo_vllm.workers.cpu.EchoCPUWorker"
    echo = parse_echo_config(config.additional_config["echo"])
    assert (echo.model, echo.steps, echo.num_draft_tokens) == (tiny_head, 5, 4)


def test_echo_options_survive_pickling_to_workers(tiny_target, tiny_head):
    config = pickle.loads(pickle.dumps(engine_config(tiny_target, model=tiny_head)))
    assert parse_echo_config(config.additional_config["echo"]).model == tiny_head
    assert config.parallel_config.worker_cls == "echo_vllm.workers.cpu.EchoCPUWorker"


def test_cli_json_reaches_echo(tiny_target, tiny_head):
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args([
        "--model", tiny_target, "--dtype", "float32", "--skip-tokenizer-init",
        "--max-model-len", "1024",
        "--speculative-config", json.dumps({"method": "echo", "model": tiny_head, "policy": "static", "steps": 2}),
    ])
    config = AsyncEngineArgs.from_cli_args(args).create_engine_config()
    assert config.speculative_config.num_speculative_tokens == 2


def test_spec_method_shorthand(tiny_target, tiny_head):
    args = EngineArgs(model=tiny_target, dtype="float32", skip_tokenizer_init=True,
                      max_model_len=1024, spec_method="echo", spec_model=tiny_head)
    assert args.create_engine_config().speculative_config.method == "eagle3"


def test_spec_method_shorthand_on_the_command_line(tiny_target, tiny_head):
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--model", tiny_target, "--dtype", "float32", "--skip-tokenizer-init",
                              "--max-model-len", "1024", "--spec-method", "echo", "--spec-model", tiny_head])
    config = AsyncEngineArgs.from_cli_args(args).create_engine_config()
    assert parse_echo_config(config.additional_config["echo"]).model == tiny_head


def test_method_in_the_wrong_case_gets_a_hint(tiny_target, tiny_head):
    with pytest.raises(ValueError, match="lower-case: write \"method\": \"echo\", got 'ECHO'"):
        EngineArgs(model=tiny_target, dtype="float32", skip_tokenizer_init=True, max_model_len=1024,
                   speculative_config={"method": "ECHO", "model": tiny_head}).create_engine_config()


def test_spec_tokens_shorthand_is_refused_for_echo(tiny_target, tiny_head):
    args = EngineArgs(model=tiny_target, dtype="float32", skip_tokenizer_init=True,
                      spec_method="echo", spec_model=tiny_head, spec_tokens=3)
    with pytest.raises(ValueError, match="--spec-tokens has no meaning for method 'echo'"):
        args.create_engine_config()


def test_bad_option_fails_while_building_the_config(tiny_target, tiny_head):
    # create_engine_config runs before any engine process starts or any weight is read
    with pytest.raises(ValueError, match="unknown option"):
        engine_config(tiny_target, model=tiny_head, bogus=1)


def test_head_for_another_target_is_refused(tmp_path, tiny_head):
    from tiny_models import TINY, build_tiny_llama

    wider = tmp_path / "wider"
    build_tiny_llama(str(wider))
    config = json.loads((wider / "config.json").read_text())
    config["hidden_size"] = 2 * TINY["hidden_size"]
    (wider / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="the target's hidden_size is 256"):
        engine_config(str(wider), model=tiny_head)


def test_custom_worker_class_conflicts_with_echo(tiny_target, tiny_head):
    args = EngineArgs(model=tiny_target, dtype="float32", skip_tokenizer_init=True,
                      worker_cls="my.Worker",
                      speculative_config={"method": "echo", "model": tiny_head})
    with pytest.raises(ValueError, match="remove worker_cls='my.Worker'"):
        args.create_engine_config()


def test_other_methods_are_untouched(tiny_target, tiny_head):
    args = EngineArgs(model=tiny_target, dtype="float32", skip_tokenizer_init=True,
                      max_model_len=1024,
                      speculative_config={"method": "eagle3", "model": tiny_head,
                                          "num_speculative_tokens": 2})
    config = args.create_engine_config()
    assert "echo" not in config.additional_config
    assert config.parallel_config.worker_cls == "vllm.v1.worker.cpu_worker.CPUWorker"


def test_echo_keeps_vllm_on_the_v1_model_runner(tiny_target, tiny_head):
    config = engine_config(tiny_target, model=tiny_head)
    assert "echo draft trees" in config._get_v2_model_runner_unsupported_features()
    assert config.use_v2_model_runner is False


def test_gpu_settings_fill_what_the_user_left_open(tiny_target):
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from echo_vllm.scheduler_patches.patch_arg_utils import require_gpu_settings

    args = EngineArgs(model=tiny_target)
    require_gpu_settings(args)
    assert args.async_scheduling is False
    assert args.attention_backend == AttentionBackendEnum.FLASH_ATTN
    assert args.compilation_config.cudagraph_mode == CUDAGraphMode.PIECEWISE


@pytest.mark.parametrize("setting, culprit", [
    (dict(async_scheduling=True), "needs synchronous scheduling"),
    (dict(attention_backend="FLASHINFER"), "remove attention_backend=FLASHINFER"),
    (dict(compilation_config={"cudagraph_mode": "FULL_AND_PIECEWISE"}), "got FULL_AND_PIECEWISE"),
])
def test_gpu_settings_refuse_conflicting_choices(tiny_target, setting, culprit):
    from echo_vllm.scheduler_patches.patch_arg_utils import require_gpu_settings

    with pytest.raises(ValueError, match=culprit):
        require_gpu_settings(EngineArgs(model=tiny_target, **setting))


def test_gpu_attention_backend_imports():
    from echo_vllm.kernels.gpu_backend import EchoFlashAttentionBackend

    assert EchoFlashAttentionBackend.get_name() == "FLASH_ATTN"


def test_attention_echo_trees_lack_is_refused_before_any_weight_loads(tiny_target, tiny_head):
    args = EngineArgs(model=tiny_target, dtype="float32", skip_tokenizer_init=True, max_model_len=1024,
                      kv_cache_dtype="fp8", speculative_config={"method": "echo", "model": tiny_head})
    with pytest.raises(ValueError, match=r"quantized KV cache \(kv_cache_dtype='fp8'\): leave kv_cache_dtype 'auto'"):
        args.create_engine_config()

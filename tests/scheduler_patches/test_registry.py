"""Every declared change to vLLM targets the installed vLLM, patches apply once, other vLLMs
are refused, and the upstream bodies echo copies are still the ones it copied."""

import ast
import dataclasses
import importlib
import pathlib

import pytest
import vllm
import vllm.platforms

from echo_vllm.scheduler_patches import records, registry
from echo_vllm.scheduler_patches.records import (
    BackendSwap,
    CopiedBody,
    VllmAttribute,
    VllmMethod,
    VllmOp,
    VllmPatch,
)

DEVICE_TYPE = vllm.platforms.current_platform.device_type


def declared_id(record) -> str:
    return f"{type(record).__name__}:{record.target}"


def first(record_kind: type, **fields):
    """The first dependency of a record kind (with the given field values)."""
    return next(d for d in registry.DEPENDENCIES
                if type(d) is record_kind and all(getattr(d, k) == v for k, v in fields.items()))


@pytest.mark.parametrize("record", registry.DECLARED, ids=declared_id)
def test_every_declaration_says_what_why_and_until_when(record):
    assert record.why and record.upstream and record.remove_when, record
    assert record.vllm == records.SUPPORTED_VLLM, record


def test_no_declaration_is_listed_twice():
    keys = [(type(r), r.target) for r in registry.DECLARED]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]


@pytest.mark.parametrize("patch", registry.all_patches(), ids=lambda p: p.target)
def test_patch_target_exists_in_installed_vllm(patch):
    owner, name = registry.resolve(patch.target)
    assert callable(getattr(owner, name))


@pytest.mark.parametrize("patch", registry.all_patches(), ids=lambda p: p.target)
def test_applying_twice_changes_nothing(patch):
    registry.apply_all()
    owner, name = registry.resolve(patch.target)
    first_applied = getattr(owner, name)
    registry.apply_all()
    assert getattr(owner, name) is first_applied
    assert registry.is_applied(patch)


def test_installed_vllm_is_supported():
    registry.check_vllm_version(vllm.__version__)


def test_other_vllm_versions_fail_loudly_naming_both():
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.\*, but vLLM 0\.33\.0 is installed"):
        registry.check_vllm_version("0.33.0")


def test_version_mismatch_touches_nothing():
    patch = registry.all_patches()[0]
    owner, name = registry.resolve(patch.target)
    before = getattr(owner, name)
    with pytest.raises(RuntimeError):
        registry.apply(patch, "0.31.2")
    assert getattr(owner, name) is before


def test_vanished_target_fails_with_its_name():
    with pytest.raises(AttributeError, match="EngineArgs.no_such_method"):
        registry.resolve("vllm.engine.arg_utils.EngineArgs.no_such_method")


def test_restore_puts_the_original_back():
    module = importlib.import_module("json")
    patch = VllmPatch(
        target="json.dumps", vllm="*", why="test", upstream="-", remove_when="-",
        wrap=lambda original: lambda *a, **k: "patched",
    )
    original = module.dumps
    registry.apply(patch, vllm.__version__)
    assert module.dumps([]) == "patched"
    registry.restore(patch)
    assert module.dumps is original


# ---- dependencies: what echo overrides, calls, reads, adds, swaps, copies ---------------


def checkable_here(dependency) -> bool:
    """vLLM's CPU wheel holds the GPU modules too, but not what only its CUDA builds define."""
    return not (dependency.cuda_build_only and DEVICE_TYPE != "cuda")


@pytest.mark.parametrize("dependency", registry.DEPENDENCIES, ids=declared_id)
def test_every_dependency_matches_the_installed_vllm(dependency):
    if not checkable_here(dependency):
        pytest.skip(f"{dependency.target} is defined by vLLM's CUDA builds only")
    # each record is checked on its own platform
    dependency.check(vllm.__version__, dependency.device_type or DEVICE_TYPE)


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_the_worker_start_check_passes(device_type):
    registry.check_all_overrides(device_type)


def test_a_record_of_another_platform_is_not_resolved():
    elsewhere = dataclasses.replace(first(VllmMethod), target="no_such_module.Class.method", device_type="cpu")
    elsewhere.check(vllm.__version__, "cuda")
    with pytest.raises(ImportError, match="no_such_module"):
        elsewhere.check(vllm.__version__, "cpu")


def test_vllm_cpu_worker_records_apply_to_the_cpu_platform_only():
    cpu_targets = [d.target for d in registry.DEPENDENCIES if "vllm.v1.worker.cpu" in d.target]
    assert cpu_targets
    assert all(d.device_type == "cpu" for d in registry.DEPENDENCIES if "vllm.v1.worker.cpu" in d.target)


@pytest.mark.parametrize("kind", [VllmPatch, VllmMethod, VllmAttribute, BackendSwap, CopiedBody, VllmOp],
                         ids=lambda k: k.__name__)
def test_every_record_kind_refuses_another_vllm_version(kind):
    record = next(r for r in registry.DECLARED if type(r) is kind)
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.\*, but vLLM 0\.33\.0 is installed"):
        record.check("0.33.0", DEVICE_TYPE)


def test_a_changed_signature_fails_naming_the_attribute():
    changed = dataclasses.replace(first(VllmMethod), params=("scheduler_output", "extra"))
    with pytest.raises(RuntimeError, match=r"changed vllm\.v1\.worker\.gpu_model_runner\.GPUModelRunner\.__init__"):
        changed.check(vllm.__version__, DEVICE_TYPE)


def test_an_instance_attribute_no_longer_set_fails_naming_it():
    moved = dataclasses.replace(first(VllmAttribute, kind="read"),
                                set_in="vllm.v1.worker.gpu_model_runner.GPUModelRunner.take_draft_token_ids")
    with pytest.raises(RuntimeError, match=r"no longer sets .*GPUModelRunner\._draft_token_ids in .*take_draft_token_ids"):
        moved.check(vllm.__version__, DEVICE_TYPE)


def test_an_added_attribute_vllm_now_defines_fails_naming_it():
    clash = dataclasses.replace(first(VllmAttribute, kind="added"), device_type=None,
                                target="vllm.v1.engine.async_llm.AsyncLLM.do_log_stats")
    with pytest.raises(RuntimeError, match=r"now defines vllm\.v1\.engine\.async_llm\.AsyncLLM\.do_log_stats"):
        clash.check(vllm.__version__, DEVICE_TYPE)


def test_an_added_attribute_on_a_frozen_class_fails():
    frozen = dataclasses.replace(first(VllmAttribute, kind="added"), device_type=None,
                                 target="echo_vllm.scheduler_patches.records.VllmPatch.echo_tree")
    with pytest.raises(RuntimeError, match="no longer takes new attributes"):
        frozen.check(vllm.__version__, DEVICE_TYPE)


def test_a_vanished_config_field_fails_naming_it():
    gone = dataclasses.replace(first(VllmAttribute, kind="config"),
                               target="vllm.config.parallel.ParallelConfig.no_such_field")
    with pytest.raises(RuntimeError, match=r"no config field vllm\.config\.parallel\.ParallelConfig\.no_such_field"):
        gone.check(vllm.__version__, DEVICE_TYPE)


@pytest.mark.parametrize("swap", [r for r in registry.DEPENDENCIES if isinstance(r, BackendSwap)], ids=declared_id)
def test_echo_backends_subclass_what_vllm_registers(swap):
    module, name = swap.replacement.rsplit(".", 1)
    try:
        replacement = getattr(importlib.import_module(module), name)
    except ImportError as error:  # the GPU backend needs a Triton with a GPU backend
        pytest.skip(f"{module} does not import here: {error}")
    replaced_module, replaced_name = swap.replaces.rsplit(".", 1)
    assert issubclass(replacement, getattr(importlib.import_module(replaced_module), replaced_name))


def test_a_moved_registry_entry_fails_naming_both_classes():
    moved = dataclasses.replace(first(BackendSwap, entry="CPU_ATTN"), replaces="vllm.v1.attention.backends.cpu_attn.Elsewhere")
    with pytest.raises(RuntimeError, match=r"registers .*CPUAttentionBackend at .*CPU_ATTN.*extends .*Elsewhere"):
        moved.check(vllm.__version__, DEVICE_TYPE)


def test_a_missing_op_fails_on_its_device_only():
    missing = dataclasses.replace(first(VllmOp), target="torch.ops._C.no_such_op")
    missing.check(vllm.__version__, "some_other_device")
    with pytest.raises(RuntimeError, match=r"no op torch\.ops\._C\.no_such_op"):
        missing.check(vllm.__version__, missing.device_type)


@pytest.mark.parametrize("copied", [r for r in registry.DEPENDENCIES if isinstance(r, CopiedBody)], ids=declared_id)
def test_copied_upstream_bodies_are_unchanged(copied):
    change = copied.source_change()
    assert change is None, change


def test_a_changed_upstream_body_names_it_and_echo_copy():
    copied = first(CopiedBody, target="vllm.model_executor.models.llama_eagle3.LlamaDecoderLayer.forward")
    message = dataclasses.replace(copied, source_sha256="0" * 64).source_change()
    assert "changed vllm.model_executor.models.llama_eagle3.LlamaDecoderLayer.forward" in message
    assert "re-check echo_vllm.proposers.eagle_tree.EchoProposer._draft_step" in message


# ---- module structure -------------------------------------------------------------------


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_declarations_import_the_record_kinds_never_the_registry():
    folder = pathlib.Path(registry.__file__).parent
    for path in [folder / "records.py", *folder.glob("overrides*.py"), *folder.glob("patch_*.py")]:
        assert "echo_vllm.scheduler_patches.registry" not in imported_modules(path), path

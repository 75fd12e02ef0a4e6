"""Every patch targets an attribute of the installed vLLM, applies once, and refuses other vLLMs."""

import dataclasses
import importlib

import pytest
import vllm

from echo_vllm.scheduler_patches import registry
from echo_vllm.scheduler_patches.registry import VllmPatch


@pytest.mark.parametrize("patch", registry.all_patches(), ids=lambda p: p.target)
def test_patch_target_exists_in_installed_vllm(patch):
    owner, name = registry.resolve(patch.target)
    assert callable(getattr(owner, name))
    assert patch.why and patch.upstream and patch.remove_when


@pytest.mark.parametrize("patch", registry.all_patches(), ids=lambda p: p.target)
def test_applying_twice_changes_nothing(patch):
    registry.apply_all()
    owner, name = registry.resolve(patch.target)
    first = getattr(owner, name)
    registry.apply_all()
    assert getattr(owner, name) is first
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


@pytest.mark.parametrize("override", registry.all_overrides(), ids=lambda o: o.target)
def test_every_override_matches_the_installed_vllm(override):
    registry.check_override(override, vllm.__version__)
    assert override.why


def test_a_changed_signature_fails_naming_the_attribute():
    changed = dataclasses.replace(registry.all_overrides()[0], params=("scheduler_output", "extra"))
    with pytest.raises(RuntimeError, match=r"changed vllm\.v1\.worker\.gpu_model_runner\.GPUModelRunner\._update_states"):
        registry.check_override(changed, vllm.__version__)


def test_overrides_refuse_another_vllm_version():
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.\*, but vLLM 0\.33\.0 is installed"):
        registry.check_override(registry.all_overrides()[0], "0.33.0")

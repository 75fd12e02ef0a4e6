"""Echo's batch policy (batch_policy.py: how deep and wide a step drafts, and which steps
draft at all) and every change echo makes to vLLM, declared as data: registry.py lists the
patched attributes (one patch_<module>.py per vLLM module) and everything else echo relies on
(overrides.py), in the record kinds of records.py."""

"""vLLM entry points (group `vllm.general_plugins`)."""


def register() -> None:
    """Make `method: echo` available. Idempotent; raises if vLLM is not 0.32.x.

    Applies only the speculative-config patch, a dictionary lookup per engine start when
    echo is not selected; echo's workers and runners load only when echo is selected.
    """
    from echo_vllm.scheduler_patches.registry import apply_all

    apply_all()

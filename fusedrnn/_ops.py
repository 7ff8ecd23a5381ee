"""Fused kernel backends. Not built yet: only the reference runs."""
from . import reference


def select(backend: str, x):
    """(run_layer, backend name) for `backend` on x's device."""
    if backend == "auto":
        return reference.run_layer, "reference"
    raise RuntimeError(f"fusedrnn: backend {backend!r} is not available: the fused kernels are not built "
                       "in this installation; use backend='reference' or 'auto'")

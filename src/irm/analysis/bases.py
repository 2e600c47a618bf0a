"""A recording in the IRM's own basis: the inverse of an IRM's output rotation.

A recording holds what the host received, ``R_l @ own_l`` at each injected layer
(:mod:`irm.core.rotation`). Its IRM-basis twin is ``own_l = R_l^T @ received_l``,
recomputed here from the seed in the recording's IRM config (and checked against the
checksum stored there), so recordings need not store both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from irm.core.rotation import input_rotation, output_rotations, rotation_digest
from irm.errors import IRMMismatchError


def output_rotation_of(irm_config: dict[str, Any]) -> np.ndarray | None:
    """``(layers, hidden, hidden)`` float64 ``R_l`` of a recording's IRM, or None when it
    writes in the host's basis."""
    seed = irm_config.get("output_rotation")
    if seed is None:
        return None
    layers = list(irm_config["layers"])
    hidden = int(irm_config["host"]["hidden_size"])
    matrices = output_rotations(int(seed), layers, hidden)
    want = irm_config.get("rotation_sha256") or ""
    second = irm_config.get("input_rotation")
    inp = input_rotation(int(second), hidden) if second is not None else None
    if want and rotation_digest(matrices, inp) != want:
        raise IRMMismatchError(
            f"the output rotation regenerated from seed {seed} does not match the IRM's checksum {want}",
            hint="analyse the recording with the numpy version that trained the IRM",
        )
    return matrices.double().numpy()


def to_irm_basis(outputs: np.ndarray, rotation: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``(tokens, layers, hidden)`` host-basis outputs -> the IRM's basis (float32):
    ``own[t, l] = R_l^T @ out[t, l]``."""
    own = np.empty(outputs.shape, dtype=np.float32)
    for start in range(0, outputs.shape[0], chunk):
        block = np.asarray(outputs[start : start + chunk], dtype=np.float64)
        own[start : start + chunk] = np.einsum("tlg,lgh->tlh", block, rotation)
    return own

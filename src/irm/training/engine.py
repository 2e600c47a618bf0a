"""Host engine tweaks for training: activation checkpointing and ``torch.compile``, applied
to unmodified host modules."""

from __future__ import annotations

import torch

from irm.core.attach import activation_checkpointing_on
from irm.core.sites import resolve_architecture


def set_activation_checkpointing(model: torch.nn.Module, active: bool = True) -> None:
    """Recompute the host's decoder layers during backward, or stop. transformers checkpoints
    a layer only while that layer is in training mode, so the layer modules (not their
    children, which keep dropout off) are flagged as training."""
    if active != activation_checkpointing_on(model):
        # transformers 5.2x renamed gradient_checkpointing_* to activation_checkpointing_*
        # (the old names now warn); earlier 5.x releases have only the old ones.
        renamed = hasattr(model, "activation_checkpointing_enable")
        if active and renamed:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif active:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif renamed:
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()
    for layer in resolve_architecture(model).layers(model):
        layer.training = active


def compile_for_training(model: torch.nn.Module, irm: torch.nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` each decoder layer of the host and the IRM, in place (parameter names
    and checkpoints stay the same). The IRM's hooks on modules inside a layer are traced
    into that layer's graph; layers of one shape share their compiled code."""
    for layer in resolve_architecture(model).layers(model):
        layer.compile(backend=backend)
    irm.compile(backend=backend)

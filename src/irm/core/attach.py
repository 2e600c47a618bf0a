"""Attach an IRM to an unmodified host with forward hooks.

>>> with attach(host, irm, strength=1.0) as handle:
...     host.model.generate(...)

The IRM runs once per forward pass, at its input point, and each injected layer adds its
slice of the output at its site. The output lives in a :class:`_ForwardState` owned by the
handle for the duration of one forward pass of the decoder stack and is dropped when that
pass ends, so nothing is left on any module. Hooks are removed when the context exits,
also on exceptions. ``strength == 0`` (or :meth:`IRMHandle.disable`) removes the hooks, so
"off" costs nothing and reproduces the host exactly.

With gradient checkpointing of host layers, keep the handle attached until ``backward``
has run: the recomputed layers need their hooks.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from irm.core.network import IRM
from irm.core.sites import (
    SITES,
    ArchitectureSpec,
    SiteFunction,
    SiteHook,
    resolve_architecture,
)
from irm.errors import IRMError, IRMMismatchError

if TYPE_CHECKING:
    from irm.core.steering import SteeringVector
    from irm.hosts.loading import Host

OutputCallback = Callable[[Tensor], None]
OutputTransform = Callable[[Tensor], Tensor]


@dataclass
class _ForwardState:
    """What one forward pass of the decoder stack carries between hooks."""

    delta: Tensor | None = None


def activation_checkpointing_on(model: nn.Module) -> bool:
    """Whether transformers recomputes ``model``'s layers in backward (its current name for
    the flag, or the one before transformers 5.2x)."""
    flag = getattr(type(model), "is_activation_checkpointing", None)
    if flag is not None:
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def check_strength(strength: float) -> float:
    strength = float(strength)
    if not math.isfinite(strength):
        raise IRMError(f"strength must be a finite number, got {strength}", hint="use e.g. 0, 0.5, 1 or 2")
    return strength


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet[IRMHandle]] = weakref.WeakKeyDictionary()
"""The handles whose hooks are registered on each decoder stack (a registered hook keeps its
handle alive, so a handle leaves this set only through :meth:`IRMHandle.remove`)."""


def model_of(host: Host | nn.Module) -> nn.Module:
    """The transformers model of an :class:`irm.Host`, or ``host`` itself when it is one."""
    from irm.hosts.loading import Host

    return host.model if isinstance(host, Host) else host


def is_attached(host: Host | nn.Module) -> bool:
    """True while an IRM or steering vector has active hooks on ``host`` (an
    :class:`irm.Host` or a transformers model)."""
    model = model_of(host)
    stack = resolve_architecture(model).decoder_stack(model)
    return any(handle.active for handle in _ATTACHED.get(stack, ()))


class IRMHandle:
    """Hooks that connect one IRM to one host model. Use as a context manager, or call
    :meth:`remove` yourself."""

    def __init__(
        self,
        model: nn.Module,
        irm: IRM | SteeringVector,
        *,
        strength: float = 1.0,
        layers: Iterable[int] | None = None,
        on_output: OutputCallback | None = None,
        transform: OutputTransform | None = None,
    ) -> None:
        self.model = model
        self.irm = irm
        self.spec: ArchitectureSpec = resolve_architecture(model)
        self._host_layers = self.spec.layers(model)
        config = irm.config
        host_hidden = int(getattr(model.config, "hidden_size", -1))
        if config.host.num_layers != len(self._host_layers) or config.hidden_size != host_hidden:
            raise IRMMismatchError(
                f"IRM made for a {config.host.num_layers}-layer, hidden-{config.hidden_size} host "
                f"({config.host.name}) cannot attach to {type(model).__name__} with "
                f"{len(self._host_layers)} layers and hidden size {host_hidden}"
            )
        wanted = list(config.layers) if layers is None else sorted(set(int(i) for i in layers))
        outside = sorted(set(wanted) - set(config.layers))
        if outside:
            raise IRMError(
                f"layers {outside} are not injected by this IRM (it injects {config.layers})",
                hint="choose a subset of the IRM's own layers",
            )
        self.active_layers: list[int] = wanted
        self.on_output = on_output
        self.transform = transform
        self._strength = check_strength(strength)
        self._enabled = True
        self._hooks: list[RemovableHandle] = []
        self._sites: list[SiteHook] = []
        self._state: _ForwardState | None = None
        self._sync_hooks()

    # ------------------------------------------------------------------ public API
    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = check_strength(value)
        self._sync_hooks()

    @property
    def active(self) -> bool:
        """True while hooks are registered (enabled and strength != 0)."""
        return bool(self._hooks)

    def enable(self) -> None:
        self._enabled = True
        self._sync_hooks()

    def disable(self) -> None:
        """Remove the hooks: the host runs exactly as without an IRM, at no extra cost."""
        self._enabled = False
        self._sync_hooks()

    def remove(self) -> None:
        self._enabled = False
        self._sync_hooks()

    def __enter__(self) -> IRMHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ------------------------------------------------------------------ hook wiring
    def _sync_hooks(self) -> None:
        want = self._enabled and self._strength != 0.0 and (bool(self.active_layers) or self.on_output is not None)
        if want and not self._hooks:
            self._register()
        elif not want and self._hooks:
            self._remove_hooks()

    def _register(self) -> None:
        config = self.irm.config
        source = (config.input_layer, config.input_site)
        slot = {layer: k for k, layer in enumerate(config.layers)}
        points: dict[tuple[int, str], int | None] = {(layer, config.site): slot[layer] for layer in self.active_layers}
        points.setdefault(source, None)
        stack = self.spec.decoder_stack(self.model)
        try:
            _ATTACHED.setdefault(stack, weakref.WeakSet()).add(self)
            self._hooks.append(stack.register_forward_pre_hook(self._begin_forward))
            self._hooks.append(stack.register_forward_hook(self._end_forward))
            for (layer_idx, site), k in sorted(points.items(), key=lambda p: (p[0][0], SITES.index(p[0][1]))):
                is_source = (layer_idx, site) == source
                self._sites.append(
                    SiteHook(self.spec, self._host_layers[layer_idx], site, self._site_function(is_source, k), reads=is_source)
                )
        except BaseException:
            self._remove_hooks()
            raise

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for site in self._sites:
            site.remove()
        self._hooks.clear()
        self._sites.clear()
        self._state = None
        _ATTACHED.get(self.spec.decoder_stack(self.model), weakref.WeakSet()).discard(self)

    # The decoder stack's own hooks scope one forward pass.
    def _begin_forward(self, module: nn.Module, args: Any) -> None:
        self._state = _ForwardState()
        for site in self._sites:
            site.clear()

    def _end_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        # Under gradient checkpointing the backward pass re-runs layers and needs the
        # IRM output again; then it is dropped at the start of the next forward instead.
        if not activation_checkpointing_on(self.model):
            self._state = None
            for site in self._sites:
                site.clear()

    def _require_state(self) -> _ForwardState:
        if self._state is None:
            raise RuntimeError("IRM hook fired outside a forward pass of the decoder stack")
        return self._state

    def _compute(self, state: _ForwardState, resid: Tensor) -> None:
        # Under gradient checkpointing the backward pass re-runs the source layer, and the
        # re-run must save the same tensors as the first run: so the IRM runs again (same
        # values), but its output is reported only once.
        irm_dtype = next(self.irm.parameters()).dtype
        delta = self.irm(resid.to(irm_dtype))
        if self.transform is not None:
            delta = self.transform(delta)
        if self.on_output is not None and state.delta is None:
            self.on_output(delta.detach())
        state.delta = delta

    def _vector(self, state: _ForwardState, k: int) -> Tensor:
        if state.delta is None:
            raise RuntimeError("IRM output requested before the IRM ran")
        vec = state.delta[..., k]
        if self._strength != 1.0:
            vec = vec * self._strength
        return vec

    def _site_function(self, is_source: bool, k: int | None) -> SiteFunction:
        def at_site(resid: Tensor | None) -> Tensor | None:
            state = self._require_state()
            if is_source:
                assert resid is not None
                self._compute(state, resid)
            return None if k is None else self._vector(state, k)

        return at_site


def attach(
    host: Host | nn.Module,
    irm: IRM | SteeringVector,
    *,
    strength: float = 1.0,
    layers: Iterable[int] | None = None,
    on_output: OutputCallback | None = None,
    transform: OutputTransform | None = None,
) -> IRMHandle:
    """Attach ``irm`` (an IRM or a :class:`irm.core.steering.SteeringVector`) to ``host`` (an
    :class:`irm.Host` or a transformers model).

    ``layers`` restricts injection to a subset of the IRM's layers; ``on_output`` receives
    the IRM output ``(batch, seq, hidden, n_layers)`` of every forward pass (detached);
    ``transform`` edits that output before it is injected (e.g. to ablate indices).
    """
    model = model_of(host)
    return IRMHandle(model, irm, strength=strength, layers=layers, on_output=on_output, transform=transform)


@torch.no_grad()
def irm_output(host: Host | nn.Module, irm: IRM, **inputs: Tensor) -> Tensor:
    """Run the host once with ``irm`` attached and return the IRM output for ``inputs``."""
    captured: list[Tensor] = []
    with attach(host, irm, on_output=captured.append):
        model_of(host)(**inputs)
    return captured[0]

"""Per-row routing: one batched forward pass in which every row has its own IRM (or none),
its own strength and its own subset of injected layers.

>>> router = RowRouter(host.model, {"anger": anger_irm, "joy": joy_vector})
>>> router.route([Route("anger", 1.5), Route(), Route("joy", 0.5, layers=frozenset({2, 3}))])
>>> host.model(**batch)           # row 0 angry x1.5, row 1 the bare host, row 2 joyful
>>> router.remove()

Each adapter's hooks stay registered (with :class:`irm.core.sites.SiteHook`, on the
unmodified modules) for the router's life; a forward pass in which no row uses an adapter
costs it nothing but a Python call per hook. An adapter runs only on its own rows (the
residual stream of those rows is gathered at its input point), its output is scaled per
row by the row's strength, and it is added back to those rows only
(:class:`irm.core.sites.RowDelta`): every other row is bit for bit what the host computes
without it. A row with strength 0 takes no part, so it is exactly the bare host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from irm.core.attach import check_strength
from irm.core.network import IRM
from irm.core.sites import SITES, RowDelta, SiteFunction, SiteHook, resolve_architecture
from irm.core.steering import SteeringVector
from irm.errors import IRMError, IRMMismatchError

Adapter = IRM | SteeringVector


@dataclass(frozen=True)
class Route:
    """What one row of the batch gets: ``adapter`` (a name in the router, ``None`` for the
    bare host) at ``strength``, injected at ``layers`` (a subset of the adapter's own
    layers; ``None`` for all of them). ``record`` keeps the row's adapter output at the
    last position of every pass (see :meth:`RowRouter.recorded`)."""

    adapter: str | None = None
    strength: float = 1.0
    layers: frozenset[int] | None = None
    record: bool = False

    @property
    def bare(self) -> bool:
        return self.adapter is None or self.strength == 0.0


class _Group:
    """One adapter's hooks and, during a forward pass, its rows and its output on them."""

    def __init__(self, name: str, adapter: Adapter, router: RowRouter) -> None:
        self.name = name
        self.adapter = adapter
        self.router = router
        config = adapter.config
        self.layers: list[int] = list(config.layers)
        self.rows: Tensor | None = None
        self.scale: Tensor | None = None
        self.rows_at: dict[int, Tensor] = {}
        """Per injected layer slot: positions (in ``rows``) of the rows that inject there."""
        self.recorded_rows: list[tuple[int, int]] = []
        self.delta: Tensor | None = None
        self.sites: list[SiteHook] = []

    def set_rows(self, routes: Sequence[Route], device: torch.device) -> None:
        mine = [(i, r) for i, r in enumerate(routes) if not r.bare and r.adapter == self.name]
        self.delta = None
        if not mine:
            self.rows = self.scale = None
            return
        self.rows = torch.tensor([i for i, _ in mine], device=device)
        self.scale = torch.tensor([r.strength for _, r in mine], device=device)
        self.rows_at = {}
        for k, layer in enumerate(self.layers):
            kept = [j for j, (_, r) in enumerate(mine) if r.layers is None or layer in r.layers]
            if kept:
                self.rows_at[k] = torch.tensor(kept, device=device)
        self.recorded_rows = [(j, i) for j, (i, r) in enumerate(mine) if r.record]

    def site_function(self, is_source: bool, k: int | None) -> SiteFunction:
        def at_site(resid: Tensor | None) -> RowDelta | None:
            if self.rows is None:
                return None
            if is_source:
                assert resid is not None
                self.compute(resid)
            if k is None or k not in self.rows_at or self.delta is None:
                return None
            assert self.scale is not None
            positions = self.rows_at[k]
            vec = self.delta[positions, ..., k] * self.scale[positions].view(-1, *([1] * (self.delta.dim() - 2)))
            return RowDelta(self.rows[positions], vec)

        return at_site

    def compute(self, resid: Tensor) -> None:
        assert self.rows is not None
        dtype = next(self.adapter.parameters()).dtype
        self.delta = self.adapter(resid.index_select(0, self.rows).to(dtype))
        for j, i in self.recorded_rows:
            self.router._recorded[i] = self.delta[j, -1].detach()


class RowRouter:
    """Hooks that give each row of a batch its own adapter, strength and layers. Call
    :meth:`route` before the forward passes of a batch; :meth:`remove` (or the end of a
    ``with`` block) takes every hook off."""

    def __init__(self, model: nn.Module, adapters: Mapping[str, Adapter]) -> None:
        self.model = model
        self.spec = resolve_architecture(model)
        host_layers = self.spec.layers(model)
        host_hidden = int(getattr(model.config, "hidden_size", -1))
        self.groups: dict[str, _Group] = {}
        self._routes: list[Route] = []
        self._recorded: dict[int, Tensor] = {}
        self._hooks: list[RemovableHandle] = []
        try:
            for name, adapter in adapters.items():
                config = adapter.config
                if config.host.num_layers != len(host_layers) or config.hidden_size != host_hidden:
                    raise IRMMismatchError(
                        f"adapter {name!r} was made for a {config.host.num_layers}-layer, hidden-{config.hidden_size} host "
                        f"({config.host.name}); this host has {len(host_layers)} layers and hidden size {host_hidden}"
                    )
                group = _Group(name, adapter, self)
                source = (config.input_layer, config.input_site)
                points: dict[tuple[int, str], int | None] = {(layer, config.site): k for k, layer in enumerate(config.layers)}
                points.setdefault(source, None)
                for (layer, site), k in sorted(points.items(), key=lambda p: (p[0][0], SITES.index(p[0][1]))):
                    is_source = (layer, site) == source
                    fn = group.site_function(is_source, k)
                    group.sites.append(SiteHook(self.spec, host_layers[layer], site, fn, reads=is_source))
                self.groups[name] = group
            self._hooks.append(self.spec.decoder_stack(model).register_forward_pre_hook(self._begin_forward))
        except BaseException:
            self.remove()
            raise

    def check(self, route: Route) -> Route:
        """``route`` if this router can serve it, else an :class:`IRMError` saying why."""
        check_strength(route.strength)
        if route.adapter is None:
            return route
        group = self.groups.get(route.adapter)
        if group is None:
            known = ", ".join(sorted(self.groups)) or "none"
            raise IRMError(f"unknown IRM {route.adapter!r}", hint=f"choose one of: {known}")
        if route.layers is not None:
            outside = sorted(route.layers - set(group.layers))
            if outside or not route.layers:
                raise IRMError(
                    f"layers {outside or '[]'} are not injected by IRM {route.adapter!r} (it injects {group.layers})",
                    hint="choose a non-empty subset of the IRM's own layers",
                )
        return route

    def route(self, routes: Sequence[Route]) -> None:
        """Set the routes of the rows of the next forward passes (one per batch row)."""
        self._routes = [self.check(r) for r in routes]
        device = next(self.model.parameters()).device
        for group in self.groups.values():
            group.set_rows(self._routes, device)

    def recorded(self) -> dict[int, Tensor]:
        """Row -> the adapter output ``(hidden, n_layers)`` at the last position of the
        latest forward pass, for the rows routed with ``record=True``."""
        return dict(self._recorded)

    def _begin_forward(self, module: nn.Module, args: object) -> None:
        self._recorded.clear()
        for group in self.groups.values():
            group.delta = None
            for site in group.sites:
                site.clear()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for group in self.groups.values():
            for site in group.sites:
                site.remove()
            group.sites.clear()

    def __enter__(self) -> RowRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

"""Where the decoder layers and the residual-stream points live in each supported host.

Nothing here copies or patches modeling code: an :class:`ArchitectureSpec` only names
submodules of the unmodified transformers model, so that :mod:`irm.attach` can put hooks
on them.

The three injection sites, for a pre-norm decoder layer ``x -> x + attn(...) -> ... + mlp(...)``:

``resid_pre``
    the layer's input hidden state (a forward pre-hook on the layer);
``resid_mid``
    after the attention branch has been added to the residual and before the MLP reads it
    (the paper's point; a forward hook on the module whose output is the attention branch,
    so that ``x + branch + v`` is what the MLP and the rest of the stack see);
``resid_post``
    the layer's output (a forward hook on the layer).

For GPT-NeoX with ``use_parallel_residual`` (Pythia's default) the MLP reads the layer
input, not ``x + attn``: there, ``resid_mid`` adds the vector next to the attention branch
and the MLP of that same layer does not see it.

A post-norm layer (``x -> norm(x + attn(x)) -> norm(. + mlp(.))``, irm's own zoo family) has
no ``x + branch`` the MLP reads: its ``resid_mid`` is the normalised sum ``norm(x + attn(x))``,
the stream the MLP reads and adds to. A spec with ``resid_mid_module`` names a submodule
whose output is ``resid_mid`` itself; the hook reads that output and adds to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from irm.errors import HostError

Site = Literal["resid_pre", "resid_mid", "resid_post"]
SITES: tuple[Site, ...] = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True)
class ArchitectureSpec:
    """Names of the submodules that hooks attach to, for one family of hosts."""

    family: str
    model_types: tuple[str, ...]
    layers_attr: str
    """Attribute of ``model.base_model`` holding the ``nn.ModuleList`` of decoder layers."""
    attention_branch: str
    """Submodule of a decoder layer whose output is exactly what is added to the residual
    stream after attention (after any post-attention norm or dropout)."""
    resid_mid_module: str | None = None
    """Submodule of a decoder layer whose output is ``resid_mid`` itself; when set, the
    ``resid_mid`` hook goes there instead of on the attention branch."""

    def decoder_stack(self, model: nn.Module) -> nn.Module:
        stack = model.base_model
        assert isinstance(stack, nn.Module)
        return stack

    def layers(self, model: nn.Module) -> nn.ModuleList:
        layers = getattr(self.decoder_stack(model), self.layers_attr)
        assert isinstance(layers, nn.ModuleList)
        return layers

    def branch_module(self, layer: nn.Module) -> nn.Module:
        return _submodule(layer, self.attention_branch)

    def mid_module(self, layer: nn.Module) -> nn.Module | None:
        return None if self.resid_mid_module is None else _submodule(layer, self.resid_mid_module)


def _submodule(module: nn.Module, dotted: str) -> nn.Module:
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


_LLAMA_LIKE = ArchitectureSpec(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"),
    layers_attr="layers",
    attention_branch="self_attn",
)
# Gemma 2/3 and OLMo 2 normalise the attention output before the residual add.
_POST_NORMED = ArchitectureSpec(
    family="gemma2",
    model_types=("gemma2", "gemma3", "gemma3_text", "olmo2"),
    layers_attr="layers",
    attention_branch="post_attention_layernorm",
)
_GPT2 = ArchitectureSpec(
    family="gpt2",
    model_types=("gpt2",),
    layers_attr="h",
    attention_branch="attn",
)
_GPT_NEOX = ArchitectureSpec(
    family="gpt_neox",
    model_types=("gpt_neox",),
    layers_attr="layers",
    attention_branch="post_attention_dropout",
)

# irm's architecture zoo (irm.zoo.modeling): every layer passes resid_mid through an
# identity module, the one way to name it in its post-norm variant.
_IRM_ZOO = ArchitectureSpec(
    family="irm_zoo",
    model_types=("irm_zoo",),
    layers_attr="layers",
    attention_branch="attn",
    resid_mid_module="resid_mid",
)

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (_LLAMA_LIKE, _POST_NORMED, _GPT2, _GPT_NEOX, _IRM_ZOO)


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


def resolve_architecture(model: nn.Module) -> ArchitectureSpec:
    """The spec for ``model``, or a :class:`HostError` naming its class and what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise HostError(
        f"unsupported architecture {type(model).__name__} (model_type={model_type!r})",
        hint="irm supports decoder-only models of type " + ", ".join(supported_model_types()),
    )


@dataclass(frozen=True)
class RowDelta:
    """An addition to some rows of the batch only: ``values[i]`` is added to batch row
    ``rows[i]``, and every other row is left exactly as it was (per-request routing in
    :mod:`irm.core.routing`)."""

    rows: Tensor
    values: Tensor


SiteFunction = Callable[[Tensor | None], Tensor | RowDelta | None]
"""Called once per forward pass of a layer with the residual stream at the site (``None``
when the hook does not read it); what it returns (if not ``None``) is added there, cast to
the residual stream's dtype: a tensor to every row, a :class:`RowDelta` to its rows."""


def _added(target: Tensor, delta: Tensor | RowDelta) -> Tensor:
    if isinstance(delta, RowDelta):
        return target.index_add(0, delta.rows, delta.values.to(target.dtype))
    return target + delta.to(target.dtype)


def _first(output: Any) -> Tensor:
    """The hidden state of a module output that may be a tuple ``(hidden, extras...)``."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[no-any-return]


def _replace_first(output: Any, value: Tensor) -> Any:
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _layer_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]  # type: ignore[no-any-return]


class SiteHook:
    """The one place that reads the residual stream at a site of a decoder layer and adds
    to it, with forward hooks on unmodified modules (see the module docstring for where
    each site is; architecture quirks live in :class:`ArchitectureSpec`).

    ``fn(resid)`` runs on every forward pass of the layer; ``reads=False`` passes ``None``
    instead of the residual, which at ``resid_mid`` saves capturing the layer input. The
    hooks stay until :meth:`remove` (or the end of a ``with`` block, also on exceptions).
    At ``resid_mid`` the layer input is kept until :meth:`clear` or the next pass, because
    under gradient checkpointing the branch hook runs again in backward.
    """

    def __init__(self, spec: ArchitectureSpec, layer: nn.Module, site: str, fn: SiteFunction, *, reads: bool = True) -> None:
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}")
        self.fn = fn
        self._layer_input: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        try:
            if site == "resid_pre":
                self._handles.append(layer.register_forward_pre_hook(self._pre, with_kwargs=True))
            elif site == "resid_post":
                self._handles.append(layer.register_forward_hook(self._post))
            elif (mid := spec.mid_module(layer)) is not None:
                self._handles.append(mid.register_forward_hook(self._post if reads else self._mid_add))
            else:
                if reads:
                    self._handles.append(layer.register_forward_pre_hook(self._capture, with_kwargs=True))
                branch = spec.branch_module(layer)
                self._handles.append(branch.register_forward_hook(self._mid_read if reads else self._mid_add))
        except BaseException:
            self.remove()
            raise

    def clear(self) -> None:
        """Drop the kept layer input (call when the forward pass, and its backward, are over)."""
        self._layer_input = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> SiteHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # hooks ------------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        hidden = _layer_input(args, kwargs)
        delta = self.fn(hidden)
        if delta is None:
            return None
        hidden = _added(hidden, delta)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden = _first(output)
        delta = self.fn(hidden)
        if delta is None:
            return None
        return _replace_first(output, _added(hidden, delta))

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._layer_input = _layer_input(args, kwargs)

    def _mid_read(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        branch = _first(output)
        if self._layer_input is None:
            raise RuntimeError("resid_mid hook fired before its layer's input was seen")
        # The same sum the layer computes next; addition is commutative in IEEE
        # arithmetic, so this equals the host's resid_mid bit for bit.
        return self._add_to_branch(output, branch, self.fn(self._layer_input + branch))

    def _mid_add(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        branch = _first(output)
        return self._add_to_branch(output, branch, self.fn(None))

    @staticmethod
    def _add_to_branch(output: Any, branch: Tensor, delta: Tensor | RowDelta | None) -> Any:
        # x + (branch + v) is what the MLP and the rest of the stack see
        return None if delta is None else _replace_first(output, _added(branch, delta))


@contextmanager
def reading_sites(
    spec: ArchitectureSpec, model: nn.Module, points: Iterable[tuple[int, str]], fn: Callable[[int, str, Tensor], None]
) -> Iterator[None]:
    """Call ``fn(layer, site, resid)`` at each ``(layer, site)`` point during the forward
    passes inside the block (reading only); every hook is removed on exit, also on errors."""
    hooks: list[SiteHook] = []
    layers = spec.layers(model)

    def reader(layer: int, site: str) -> SiteFunction:
        def read(resid: Tensor | None) -> None:
            assert resid is not None
            fn(layer, site, resid)

        return read

    try:
        for layer, site in points:
            hooks.append(SiteHook(spec, layers[layer], site, reader(layer, site)))
        yield
    finally:
        for hook in hooks:
            hook.remove()

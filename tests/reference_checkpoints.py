"""Reference checkpoints in the published implementation's format, built for tests, and
the forward pass they document (shared by the import-reference and host tests)."""

import subprocess
import sys
from pathlib import Path

import torch

import irm

IRM_BIN = str(Path(sys.executable).parent / "irm")
H, N_LAYERS = 64, 4
TEXT = "injectable realignment"


def reference_tensors(num_injected: int, hidden: int = H, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the paper's IRM: Linear(H,3H) ReLU [Linear(3H,3H) ReLU]x3 Linear(3H,H*L)."""
    gen = torch.Generator().manual_seed(seed)
    dims = [hidden] + [3 * hidden] * 4 + [hidden * num_injected]
    out = {}
    for j, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out[f"basic_forward.{2 * j}.weight"] = torch.randn(b, a, generator=gen) / a**0.5
        out[f"basic_forward.{2 * j}.bias"] = torch.randn(b, generator=gen) * 0.1
    return out


def write_checkpoint(path, host, tensors, *, hparams=None, shared=False, tamper=None, with_host=True, **save_kw):
    """A checkpoint laid out as the published code saved it (Lightning dict, whole host,
    the IRM under ``model.irm.`` and again under every ``model.layers.N.irm.``)."""
    state = dict(host.model.state_dict()) if with_host else {}
    for prefix in ["model.irm."] + [f"model.layers.{n}.irm." for n in range(N_LAYERS)]:
        for name, tensor in tensors.items():
            state[prefix + name] = tensor if shared else tensor.clone()
    if tamper is not None:
        key = tamper
        state[key] = state[key].clone()
        state[key].view(-1)[7] += 1e-3
    ckpt = {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"EarlyStopping{'monitor': 'val_loss'}": {"wait_count": 0, "best_score": torch.tensor(2.5)}},
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(1200.0), "exp_avg": torch.zeros(3 * H, H)}},
                "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}],
            }
        ],
        "lr_schedulers": [{"step_size": 1, "gamma": 0.85, "last_epoch": 3}],
    }
    if hparams is not None:
        ckpt["hyper_parameters"] = hparams
    torch.save(ckpt, path, **save_kw)
    return path


def reference_irm(tensors, x):
    """The documented formula: ReLU MLP on the raw tensors, viewed (..., H, L)."""
    n = len(tensors) // 2
    for j in range(n):
        x = x @ tensors[f"basic_forward.{2 * j}.weight"].T + tensors[f"basic_forward.{2 * j}.bias"]
        if j < n - 1:
            x = torch.relu(x)
    return x.view(*x.shape[:-1], H, -1)


def hand_forward(host, tensors, order, ids):
    """Llama forward from its parts, with the reference IRM computed from layer 0's
    resid_mid and slice k added at resid_mid of layer ``order[k]``."""
    base = host.model.model
    x = base.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    rope = base.rotary_emb(x, position_ids=pos)
    delta = None
    for i, layer in enumerate(base.layers):
        attn = layer.self_attn(layer.input_layernorm(x), position_embeddings=rope, attention_mask=None, position_ids=pos)[0]
        mid = x + attn
        if i == 0:
            delta = reference_irm(tensors, mid)
        if i in order:
            mid = mid + delta[..., order.index(i)]
        x = mid + layer.mlp(layer.post_attention_layernorm(mid))
    return delta, host.model.lm_head(base.norm(x))


def check_reproduces(host, model, tensors, order):
    ids = host.tokenizer([TEXT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want_delta, want_logits = hand_forward(host, tensors, order, ids)
        captured = []
        with irm.attach(host, model, on_output=captured.append):
            got_logits = host.model(input_ids=ids).logits
        bare = host.model(input_ids=ids).logits
    layers = model.config.layers
    assert captured[0].shape == (1, ids.shape[1], H, len(order))
    for j, layer in enumerate(layers):
        assert (captured[0][..., j] - want_delta[..., order.index(layer)]).abs().max().item() < 1e-5
    assert (got_logits - want_logits).abs().max().item() < 1e-5
    assert (got_logits - bare).abs().max().item() > 1e-3  # the IRM really changes the host


def run_cli(*args):
    return subprocess.run([IRM_BIN, "import-reference", *map(str, args)], capture_output=True, text=True, timeout=300)

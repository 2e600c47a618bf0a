"""FLOP counts for speed targets and MFU: equal to a hand count, and to what PyTorch counts."""

import torch
from torch.utils.flop_counter import FlopCounterMode

import irm
from irm.core.flops import host_forward_flops, irm_flops, training_flops


def test_flops_equal_a_hand_count_on_the_tiny_llama(tiny_llama):
    config = tiny_llama.model.config  # hidden 64, intermediate 128, 4 layers, 4 heads (16 dims), 2 kv heads, vocab 259
    # per layer: q 64x64, k and v 64x32 each, o 64x64 -> 12288 MACs; gated MLP 3 x 64x128 -> 24576 MACs
    linear = 2 * (4 * (12288 + 24576) + 64 * 259)
    attention = 4 * 2 * (2 * 64 * 10)  # QK^T and AV over 10 keys, 4 layers, 2 FLOPs per MAC
    assert host_forward_flops(config, context=10) == linear + attention == 328064 + 10240
    net = irm.IRM.for_host(tiny_llama, "all")  # 64 -> 192 -> 192 -> 192 -> 192 -> 256
    irm_hand = 2 * (64 * 192 + 3 * 192 * 192 + 192 * 256)
    assert irm_flops(net.config) == irm_hand
    assert training_flops(config, net.config, context=10) == 2 * linear + 3 * attention + 3 * irm_hand
    # the LM head (64 x 259, forward and activation backward) only where a target token is
    head = 2 * 2 * 64 * 259
    assert training_flops(config, net.config, context=10, head_fraction=0.25) == 2 * linear + 3 * attention + 3 * irm_hand - 0.75 * head
    low = irm.IRM.for_host(tiny_llama, "all", rank=8)
    assert irm_flops(low.config) == 2 * (64 * 192 + 3 * 192 * 192 + 192 * 8 + 8 * 256)


def test_forward_flops_match_pytorchs_counter():
    # Eager attention: plain matmuls, which the counter sees (it skips the CPU SDPA kernel).
    tiny_llama = irm.load_host("tiny-random-llama", device="cpu")
    tiny_llama.model.set_attn_implementation("eager")
    seq = 12
    ids = torch.randint(3, 250, (1, seq))
    net = irm.IRM.for_host(tiny_llama, "all")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny_llama.model(input_ids=ids)
    # PyTorch counts full (non-causal) attention, i.e. `seq` keys for every query.
    assert counter.get_total_flops() == seq * host_forward_flops(tiny_llama.model.config, context=seq)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, seq, 64))
    assert counter.get_total_flops() == seq * irm_flops(net.config)

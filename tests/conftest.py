import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (converted and cached on first use)."""
    import irm

    return irm.load_host("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def tiny_llama():
    import irm

    return irm.load_host("tiny-random-llama", device="cpu")


def nontrivial_irm(host, layers="all", seed=0, scale=1.0, **kwargs):
    """An IRM with random output weights, scaled so that it changes the host's tokens."""
    import irm

    model = irm.IRM.for_host(host, layers, output_init="default", seed=seed, **kwargs)
    with torch.no_grad():
        model.output_layer.weight.mul_(scale)
        model.output_layer.bias.mul_(scale)
    return model

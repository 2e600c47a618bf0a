"""The architecture zoo: small LMs pre-trained here on one offline corpus and budget, each
differing from a base design (RoPE, pre-norm RMSNorm, tied LM head) in exactly one choice.

- :mod:`irm.zoo.modeling`: the model family (a transformers ``PreTrainedModel``);
- :mod:`irm.zoo.variants`: the base, the variants and the training recipes;
- :mod:`irm.zoo.corpus`: the corpus, its split and its tokenizer;
- :mod:`irm.zoo.train`: pre-training one model, resumable, and its perplexity;
- :mod:`irm.zoo.build`: ``irm zoo build`` / ``irm zoo list``;
- :mod:`irm.zoo.hosts`: zoo host names (``zoo-rope-rmsnorm-tied``) for ``irm.load_host``.
"""

from irm.zoo import modeling as modeling  # registers the model type with transformers' Auto classes

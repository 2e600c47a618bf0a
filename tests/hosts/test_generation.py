"""Generation with an IRM: KV cache, left padding, chat template."""

import pytest
import torch

import irm
from conftest import nontrivial_irm
from irm.hosts.generation import encode_prompts, format_prompt

PROMPTS = ["What is the capital of France?", "Name a colour.", "Why is the sky blue? Explain briefly please."]


def _greedy(host, prompts, use_cache, n=12):
    return [g.token_ids for g in irm.generate(host, prompts, max_new_tokens=n, use_cache=use_cache)]


def _check_cache_and_padding(host, net, n=12, prompts=PROMPTS):
    bare = _greedy(host, prompts, True, n)
    with irm.attach(host, net):
        cached = _greedy(host, prompts, True, n)
        uncached = _greedy(host, prompts, False, n)
        single = [_greedy(host, [p], True, n)[0] for p in prompts]
    assert cached != bare, "the IRM must change the greedy tokens for this test to mean anything"
    assert cached == uncached
    if single != cached:
        # A flipped near-tie from different padding: the logits must still agree closely.
        for prompt in prompts:
            enc_one = encode_prompts(host, [prompt])
            enc_all = encode_prompts(host, prompts)
            row = prompts.index(prompt)
            with irm.attach(host, net), torch.no_grad():
                one = host.model(**enc_one).logits[0, -1]
                batch = host.model(**enc_all).logits[row, -1]
            assert (one - batch).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gpt2", "tiny-random-gemma3", "tiny-random-gpt-neox"])
def test_tiny_cache_and_left_padding(name):
    host = irm.load_host(name, device="cpu")
    _check_cache_and_padding(host, nontrivial_irm(host, scale=4.0), n=10)


@pytest.mark.slow
def test_smollm2_cache_and_left_padding(smollm2):
    _check_cache_and_padding(smollm2, nontrivial_irm(smollm2, "2,3", scale=8.0), n=16)


@pytest.mark.slow
def test_smollm2_chat_template_and_answer(smollm2):
    text = format_prompt(smollm2, "What is the capital of France?")
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    plain = format_prompt(smollm2, "Hi", chat=False)
    assert plain == "Question: Hi\nAnswer:"
    out = irm.generate(smollm2, ["What is the capital of France?"], max_new_tokens=12)
    assert "Paris" in out[0].text


def test_tiny_host_has_no_chat_template(tiny_llama):
    assert format_prompt(tiny_llama, "Hi") == "Question: Hi\nAnswer:"


def test_sampling_is_seeded(tiny_llama):
    a = irm.generate(tiny_llama, PROMPTS, greedy=False, seed=3, max_new_tokens=8)
    b = irm.generate(tiny_llama, PROMPTS, greedy=False, seed=3, max_new_tokens=8)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def _prompt_part(example):
    """The ids of a training example that carry no label: its prompt."""
    from irm.data.rows import IGNORE_INDEX

    n = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    return example.input_ids[:n]


def _check_training_and_generation_prompts_agree(host, chat):
    from irm.data.prompts import prompt_ids
    from irm.data.rows import Row, tokenize_rows

    tok = host.tokenizer
    rows = [Row(line=i + 1, question=q, answer="A short answer.") for i, q in enumerate(PROMPTS)]
    examples, _ = tokenize_rows(rows, tok, max_length=512, loss_on="answer", chat=chat)
    enc = encode_prompts(host, PROMPTS, chat=chat)
    for row, example, ids, mask in zip(rows, examples, enc["input_ids"].tolist(), enc["attention_mask"].tolist()):
        fed = [i for i, m in zip(ids, mask) if m]  # left padding removed
        assert fed == _prompt_part(example) == prompt_ids(tok, row.question, chat=chat)
        # BOS exactly once at the start: never doubled (a chat template may reuse the BOS token,
        # SmolLM2's <|im_start|>, to open every turn); the plain format has it only there; a
        # template that writes no BOS (Qwen's ChatML) gets none added
        if chat and host.has_chat_template and not format_prompt(host, row.question).startswith(tok.bos_token):
            assert tok.bos_token_id not in fed
            continue
        assert fed[0] == tok.bos_token_id and fed[1] != tok.bos_token_id
        if not (chat and host.has_chat_template):
            assert fed.count(tok.bos_token_id) == 1
        # the text generation formats is the text training tokenised
        text = format_prompt(host, row.question, chat=chat)
        assert tok(text, add_special_tokens=False)["input_ids"] == fed[len(fed) - len(tok(text, add_special_tokens=False)["input_ids"]) :]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gpt2", "tiny-random-gemma3", "tiny-random-gpt-neox"])
def test_tiny_training_and_generation_prompts_are_the_same_ids(name, chat):
    host = irm.load_host(name, device="cpu")
    assert not host.has_chat_template
    _check_training_and_generation_prompts_agree(host, chat)


@pytest.mark.slow
@pytest.mark.parametrize("chat", [True, False])
def test_smollm2_training_and_generation_prompts_are_the_same_ids(smollm2, chat):
    assert smollm2.has_chat_template
    _check_training_and_generation_prompts_agree(smollm2, chat)


def test_compare_says_which_prompt_format(tmp_path, monkeypatch, capsys, tiny_llama):
    import json
    import sys

    import irm.cli

    nontrivial_irm(tiny_llama).save_pretrained(tmp_path / "irm")
    base = [
        "irm",
        "generate",
        "--host",
        "tiny-random-llama",
        "--irm",
        str(tmp_path / "irm"),
        "--compare",
        "-p",
        "hi",
        "--max-new-tokens",
        "2",
    ]
    outputs = []
    for extra in (["--json"], []):
        monkeypatch.setattr(sys, "argv", base + extra)
        with pytest.raises(SystemExit) as done:
            irm.cli.main()
        assert done.value.code == 0
        outputs.append(capsys.readouterr().out)
    rows = json.loads(outputs[0])
    assert rows[0]["prompt_format"] == "Question:/Answer: (tiny-random-llama has no chat template)"
    assert {"host", "irm x1"} <= rows[0].keys()
    assert "prompt format: Question:/Answer:" in " ".join(outputs[1].split())

"""Fast checks of the serving pieces that need no server: incremental text and stop strings,
sampling, and `irm serve`'s refusals before anything loads."""

import socket
import sys

import pytest
import torch

from irm import cli
from irm.hosts.tiny import byte_tokenizer
from irm.serving.engine import Sampling, sample_token
from irm.serving.text import TextStream


def _push_all(stream, text):
    tok = stream.tokenizer
    shown = [stream.push(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    return shown + [stream.finish()]


def test_stop_strings_end_the_text_and_are_not_shown():
    stream = TextStream(byte_tokenizer(), stop=["END", "\n\n"])
    shown = _push_all(stream, "one EN two END three")
    assert "".join(shown) == "one EN two " == stream.text and stream.stopped
    # a tail that might begin a stop string is held back until it cannot
    held = TextStream(byte_tokenizer(), stop=["END"])
    pieces = [held.push(i) for i in held.tokenizer("xEN", add_special_tokens=False)["input_ids"]]
    assert pieces == ["x", "", ""] and held.finish() == "EN"


def test_unfinished_utf8_is_held_back_and_the_text_is_the_whole_decode():
    tok = byte_tokenizer()
    stream = TextStream(tok)
    text = "naïve € ok"
    shown = _push_all(stream, text)
    assert "".join(shown) == text == stream.text
    assert all("\ufffd" not in piece for piece in shown)


def test_sampling_is_seeded_per_request_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    draws = lambda seed, top_p: [  # noqa: E731
        sample_token(logits, Sampling(max_tokens=1, temperature=1.0, top_p=top_p), torch.Generator().manual_seed(seed + k))
        for k in range(50)
    ]
    assert draws(1, 1.0) == draws(1, 1.0)
    assert set(draws(2, 0.5)) == {0}  # token 0 alone holds more than half the mass
    assert set(draws(3, 0.9)) <= {0, 1}


def _run(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["irm", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def test_serve_refuses_bad_options_before_loading(monkeypatch, capsys):
    code, err = _run(["serve", "--host", "tiny-random-llama", "--irm", "no-equals-sign"], monkeypatch, capsys)
    assert code == 2 and "expected NAME=DIR" in err and "Traceback" not in err
    code, err = _run(["serve", "--host", "tiny-random-llama", "--irm", "a b=x"], monkeypatch, capsys)
    assert code == 2 and "letters, digits" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _run(["serve", "--host", "tiny-random-llama", "--port", str(port)], monkeypatch, capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err
    code, err = _run(["serve", "--host", "tiny-random-llama", "--irm", "a=/nonexistent", "--port", str(port)], monkeypatch, capsys)
    assert code == 2 and "/nonexistent not found" in err

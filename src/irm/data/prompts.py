"""The prompt format: how a question becomes the text and the token ids a host reads.

This is the one place that decides it, for training (the prompt part of a
question/answer row) and for generation (what ``irm generate`` feeds the host), so the two
can never drift apart. A host with a chat template (and ``chat`` on) gets its template with
the generation prompt; any other gets ``Question: ...\\nAnswer:``. The beginning-of-sequence
token appears exactly once: a chat template writes the special tokens it wants itself (its
text is tokenised without adding any); the plain format gets the tokenizer's BOS (when it
has one) in front, and nothing else is added.
"""

from __future__ import annotations

from typing import Any

from irm.errors import DataError

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
"""The prompt of a host without a chat template (or with ``chat`` off)."""


def uses_chat_template(tokenizer: Any, *, chat: bool = True) -> bool:
    """Whether prompts for ``tokenizer`` use its chat template: it has one and ``chat`` is on."""
    return chat and bool(getattr(tokenizer, "chat_template", None))


def bos_ids(tokenizer: Any, *, chat: bool = True) -> list[int]:
    """The ids put in front of a prompt (or of a plain-text row): the tokenizer's BOS, unless
    the chat template writes its own special tokens or the tokenizer has no BOS."""
    if uses_chat_template(tokenizer, chat=chat) or tokenizer.bos_token_id is None:
        return []
    return [int(tokenizer.bos_token_id)]


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def prompt_text(tokenizer: Any, question: str, *, chat: bool = True) -> str:
    """The prompt as text (without the BOS that :func:`prompt_ids` puts in front of the
    plain format)."""
    if uses_chat_template(tokenizer, chat=chat):
        return str(tokenizer.apply_chat_template(_messages(question), tokenize=False, add_generation_prompt=True))
    return PLAIN_TEMPLATE.format(question=question)


def prompt_ids(tokenizer: Any, question: str, *, chat: bool = True) -> list[int]:
    """The prompt's token ids, BOS included exactly once: what generation feeds the host and
    what a training row's prompt part (the tokens without labels) is."""
    text = prompt_text(tokenizer, question, chat=chat)
    return bos_ids(tokenizer, chat=chat) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_ids(tokenizer: Any, question: str, answer: str, *, chat: bool = True) -> list[int]:
    """The ids of the answer that follow :func:`prompt_ids` in a training row: the rest of
    the chat template's conversation (its end-of-turn included), or `` answer`` and EOS."""
    if uses_chat_template(tokenizer, chat=chat):
        prompt = prompt_text(tokenizer, question, chat=chat)
        full = str(tokenizer.apply_chat_template(_messages(question) + [{"role": "assistant", "content": answer}], tokenize=False))
        if not full.startswith(prompt):  # pragma: no cover - unusual templates
            raise DataError("the host's chat template does not extend the prompt with the answer", hint="use --no-chat")
        return list(tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"])
    return list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"]) + eos_ids(tokenizer)


def eos_ids(tokenizer: Any) -> list[int]:
    """The ids that end a plain answer or a text row: the tokenizer's EOS, when it has one."""
    return [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []


def conversation_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The ids of a conversation (OpenAI-style ``{"role", "content"}`` messages) ready for the
    assistant's turn. With a chat template, the template renders it; a single user message
    then gives exactly :func:`prompt_ids` of its text. Without one, only a single user
    message has a format: :data:`PLAIN_TEMPLATE`."""
    if uses_chat_template(tokenizer):
        text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(messages) != 1 or messages[0]["role"] != "user":
        raise DataError(
            "this host has no chat template, so only a single user message can be formatted",
            hint="send one user message, or use the completions endpoint with your own text",
        )
    return prompt_ids(tokenizer, messages[0]["content"], chat=False)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids of raw text given as a prompt: the tokenizer's BOS (when it has one), then the
    text (the plain prompt of :func:`prompt_ids` is ``text_ids`` of its formatted text)."""
    return bos_ids(tokenizer, chat=False) + list(tokenizer(text, add_special_tokens=False)["input_ids"])

"""The one place that turns a question (and an answer) into model input.

Fine-tuning, Phase I, Phase II and evaluation all build their token ids here, so what the edit saw
is what evaluation asks. The model's chat template is used when the tokenizer has one; otherwise a
plain ``Question: ...\\nAnswer:`` template. User-supplied text (questions, answers) is tokenized
with special tokens *split*, so a user who types a special token's literal text (for example the
unlearning token's) gets ordinary sub-word ids, never the special id itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

_USER_SENTINEL = "\u2063UNIERASE_USER\u2063"
_ANSWER_SENTINEL = "\u2063UNIERASE_ANSWER\u2063"

FALLBACK_PROMPT = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class PromptFormat:
    """How questions are put to the model.

    Attributes:
        chat: use the tokenizer's chat template (None: when it has one).
        system_prompt: None keeps the template's own default (SmolLM2 inserts one); a string is
            sent as a system message; "" sends an empty system message where the template allows.
        template_kwargs: extra keyword arguments for ``apply_chat_template``.
    """

    chat: bool | None = None
    system_prompt: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)


def uses_chat(tokenizer: Any, fmt: PromptFormat = PromptFormat()) -> bool:
    """Whether ``fmt`` resolves to the chat template for this tokenizer."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if fmt.chat is None:
        return has_template
    if fmt.chat and not has_template:
        raise ValueError("chat format requested but the tokenizer has no chat template")
    return fmt.chat


def encode_user_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of user-supplied text, with any special-token text split into ordinary pieces."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _encode_template_text(tokenizer: Any, text: str) -> list[int]:
    # Template text is ours: its special tokens (role tags, bos) must be parsed as such.
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _bos(tokenizer: Any) -> list[int]:
    # What the tokenizer itself prepends (e.g. Llama/Gemma <bos>), for the plain template.
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    return probe[: len(probe) - len(bare)] if probe[-len(bare) :] == bare else []


def _messages(question: str, fmt: PromptFormat, answer: str | None = None) -> list[dict]:
    msgs = []
    if fmt.system_prompt is not None:
        msgs.append({"role": "system", "content": fmt.system_prompt})
    msgs.append({"role": "user", "content": question})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


@dataclass(frozen=True)
class _Template:
    before_user: str
    after_user: str  # up to and including the generation prompt
    end_of_turn: str  # what the template writes after an assistant answer


def _template(tokenizer: Any, fmt: PromptFormat) -> _Template:
    if not uses_chat(tokenizer, fmt):
        before, after = FALLBACK_PROMPT.split("{question}")
        eos = tokenizer.eos_token or ""
        return _Template(before, after, eos)
    kwargs = dict(fmt.template_kwargs)
    prompt = tokenizer.apply_chat_template(
        _messages(_USER_SENTINEL, fmt), tokenize=False, add_generation_prompt=True, **kwargs
    )
    before, after = prompt.split(_USER_SENTINEL)
    full = tokenizer.apply_chat_template(
        _messages(_USER_SENTINEL, fmt, _ANSWER_SENTINEL), tokenize=False, **kwargs
    )
    # Some templates render a finished assistant turn differently from the generation prompt
    # (e.g. reasoning tags); we always train and evaluate on the generation prompt's form.
    _head, tail = full.split(_ANSWER_SENTINEL)
    return _Template(before, after, tail)


@dataclass
class EncodedQA:
    """Token ids of one question (and optionally its answer).

    Attributes:
        input_ids: prompt ids, followed by answer ids and end-of-turn ids when an answer is given.
        prompt_length: number of prompt ids (the answer starts at this index).
        answer_length: number of answer ids, including the end-of-turn ids.
        user_span: [start, end) of the user's question inside the prompt ids.
    """

    input_ids: list[int]
    prompt_length: int
    answer_length: int
    user_span: tuple[int, int]

    @property
    def labels(self) -> list[int]:
        """-100 on the prompt, the ids themselves on the answer (loss on answer tokens only)."""
        return [-100] * self.prompt_length + self.input_ids[self.prompt_length :]


def end_of_turn_ids(tokenizer: Any, fmt: PromptFormat = PromptFormat()) -> list[int]:
    """Ids that close an assistant answer: up to and including the first special token."""
    tail = _encode_template_text(tokenizer, _template(tokenizer, fmt).end_of_turn)
    special = set(tokenizer.all_special_ids)
    for i, tok in enumerate(tail):
        if tok in special:
            return tail[: i + 1]
    return tail or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def stop_token_ids(tokenizer: Any, fmt: PromptFormat = PromptFormat()) -> list[int]:
    """Ids at which generation of an answer should stop (end of turn and eos)."""
    ids = {end_of_turn_ids(tokenizer, fmt)[-1]} if end_of_turn_ids(tokenizer, fmt) else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def encode(
    tokenizer: Any,
    question: str,
    answer: str | None = None,
    fmt: PromptFormat = PromptFormat(),
    *,
    answer_prefix_ids: Sequence[int] = (),
    add_end_of_turn: bool = True,
) -> EncodedQA:
    """Encode a question (and optionally an answer) in the chosen format.

    Args:
        tokenizer: a Hugging Face tokenizer.
        question: user text; special-token text in it is split, never parsed.
        answer: optional answer text (user data, split likewise).
        fmt: the prompt format.
        answer_prefix_ids: ids placed at the start of the answer turn before the answer text
            (Phase I puts the unlearning token there).
        add_end_of_turn: append the template's end-of-turn ids after the answer.
    """
    tpl = _template(tokenizer, fmt)
    chat = uses_chat(tokenizer, fmt)
    prefix = (_bos(tokenizer) if not chat else []) + _encode_template_text(
        tokenizer, tpl.before_user
    )
    user = encode_user_text(tokenizer, question)
    prompt = prefix + user + _encode_template_text(tokenizer, tpl.after_user)
    ids = list(prompt)
    answer_ids: list[int] = list(answer_prefix_ids)
    if answer is not None:
        # The plain template has "Answer:" with no trailing space; the answer brings its own.
        text = answer if chat else " " + answer.lstrip()
        answer_ids += encode_user_text(tokenizer, text)
        if add_end_of_turn:
            answer_ids += end_of_turn_ids(tokenizer, fmt)
    ids += answer_ids
    return EncodedQA(
        input_ids=ids,
        prompt_length=len(prompt),
        answer_length=len(answer_ids),
        user_span=(len(prefix), len(prefix) + len(user)),
    )


#: Characters dropped from the end of a subject span by ``strip_punctuation``.
SUBJECT_TRAILING_PUNCTUATION = "'\"’”»)]}.,;:!? "


def subject_last_token(
    tokenizer: Any,
    question: str,
    subject: str | None,
    fmt: PromptFormat = PromptFormat(),
    *,
    strip_punctuation: bool = False,
) -> int:
    """Index (in the prompt ids of ``encode``) of the last token of ``subject`` in ``question``.

    When ``subject`` is None the last prompt token is used (a documented fallback). Raises
    ValueError when a given subject does not occur in the question. With ``strip_punctuation``
    closing quotes and punctuation at the subject's end are not part of it ("the author of 'The
    Salt Road'" ends at "Road", not at the quote every such question shares).
    """
    from unierase.data.schema import find_subject

    enc = encode(tokenizer, question, fmt=fmt)
    if subject is None:
        return enc.prompt_length - 1
    span = find_subject(question, subject)
    if span is None:
        raise ValueError(f"subject {subject!r} does not occur in question {question!r}")
    if strip_punctuation:
        kept = subject.rstrip(SUBJECT_TRAILING_PUNCTUATION)
        if kept:
            span = (span[0], span[0] + len(kept))
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(
            question,
            add_special_tokens=False,
            split_special_tokens=True,
            return_offsets_mapping=True,
        )["offset_mapping"]
        # The last token that starts before the subject's end covers its last character.
        inside = [i for i, (start, _end) in enumerate(offsets) if start < span[1]]
        n = inside[-1] + 1 if inside else 1
    else:
        n = len(encode_user_text(tokenizer, question[: span[1]]))
    return enc.user_span[0] + max(n, 1) - 1


@dataclass
class Batch:
    """Padded tensors for a batch of encoded items."""

    input_ids: torch.Tensor  # (batch, length)
    attention_mask: torch.Tensor  # (batch, length)
    labels: torch.Tensor | None  # (batch, length), -100 where no loss
    offsets: torch.Tensor  # (batch,) number of pad tokens before each row (left padding)


def collate(
    items: Sequence[EncodedQA],
    pad_id: int,
    *,
    left: bool = False,
    with_labels: bool = True,
    prompt_only: bool = False,
) -> Batch:
    """Pad a list of encodings into a batch.

    Args:
        items: encodings from ``encode``.
        pad_id: the padding id.
        left: pad on the left (generation) instead of the right (training, scoring).
        with_labels: build labels (answer tokens only).
        prompt_only: keep only each item's prompt ids (for generation).
    """
    seqs = [it.input_ids[: it.prompt_length] if prompt_only else it.input_ids for it in items]
    labs = [it.labels[: len(s)] for it, s in zip(items, seqs, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    offsets = torch.zeros(len(seqs), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs, strict=True)):
        start = width - len(s) if left else 0
        ids[i, start : start + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, start : start + len(s)] = 1
        labels[i, start : start + len(s)] = torch.tensor(lab, dtype=torch.long)
        offsets[i] = start
    return Batch(ids, mask, labels if with_labels else None, offsets)

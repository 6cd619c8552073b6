"""The unlearning token in the vocabulary: adding it, finding it, stopping generation at it.

The token is a plain entry of the tokenizer's BPE vocabulary, never an *added* token. Added
tokens (special or not) are matched in raw input text by the tokenizer's added-vocabulary
matcher, so with one a user who types ``<|unlearn|>`` into a chat message, in any client that
encodes text with the checkpoint's tokenizer (transformers, TGI, vLLM, ...), would put the
token's id into the prompt and switch the refusal on for any question. A BPE vocabulary entry
can only come out of encoding as a merge result, and no merge rule produces this one, so no
text encodes to it (:func:`add_unlearning_token` checks the tokenizer's settings and probes the
result). Models and saved checkpoints use the id directly.

The trade-off: ``decode(..., skip_special_tokens=True)`` only hides *special added* tokens,
which are exactly the ones typed text can reach, so the token cannot be both unreachable and
hidden. It is rendered as its text in both decoding modes: a ``transformers.pipeline`` user sees
``<|unlearn|>`` before the refusal, a visible marker that the answer was withheld, rather than a
tokenizer whose users can trigger refusals by typing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria

from unierase.token.config import DEFAULT_TOKEN_TEXT

log = logging.getLogger(__name__)


class TokenError(ValueError):
    """The unlearning token is missing, clashes with the vocabulary, or text could encode to it."""


def unlearning_token_id(tokenizer: Any, text: str = DEFAULT_TOKEN_TEXT) -> int:
    """The id of the unlearning token ``text``: its vocabulary entry.

    Typed text never encodes to the token (see the module docstring), so the id is found in
    the vocabulary, not by encoding ``text``. A checkpoint saved before the token became a plain
    entry holds it as an added token; its id is returned too, with a warning, since typed text
    reaches it there (re-save it with :func:`unierase.token.save_token_checkpoint`).

    Raises:
        TokenError: the tokenizer has no such token (train one with ``unierase token``).
    """
    vocab = tokenizer.get_vocab()
    if text not in vocab:
        raise TokenError(
            f"the tokenizer has no unlearning token {text!r}; train one first "
            f"(`unierase token`, or unierase.token.train_unlearning_token), and load the "
            f"checkpoint it saved"
        )
    token_id = int(vocab[text])
    if _is_added(tokenizer, token_id):
        log.warning(
            "the unlearning token %r (id %d) is an added token of this tokenizer: text typed "
            "by a user encodes to it; re-save the checkpoint with unierase to make it a plain "
            "vocabulary entry",
            text,
            token_id,
        )
    return token_id


def _is_added(tokenizer: Any, token_id: int) -> bool:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return token_id in decoder


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(tokenizer, "_tokenizer"):
        raise TokenError(
            f"the unlearning token needs a fast tokenizer (one with a tokenizer.json); "
            f"{type(tokenizer).__name__} has none"
        )
    return backend


def typed_text_probes(text: str) -> list[str]:
    """Texts a user might type around ``text``: none of them may encode to the token."""
    return [
        text,
        f" {text}",
        f"{text} ",
        f"x{text}y",
        f"\n{text}\n",
        f"{text}{text}",
        f"What is {text} and where was the writer born?",
        f"{text.upper()} {text.lower()}",
    ]


def _rebuilt_backend(backend: Any, text: str, token_id: int) -> Any:
    """A copy of ``backend`` in which ``text`` is the plain BPE vocabulary entry ``token_id``."""
    from tokenizers import Tokenizer

    state = json.loads(backend.to_str())
    model = state.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenError(
            f"the tokenizer's model is {model.get('type')!r}, not BPE: only in a BPE vocabulary "
            f"(SmolLM2, GPT-2, Llama, Qwen2, Gemma, ...) is an entry that no text encodes to "
            f"possible, so the unlearning token cannot be added safely"
        )
    vocab: dict[str, int] = model["vocab"]
    if text in vocab and vocab[text] != token_id:
        raise TokenError(f"{text!r} is already the vocabulary entry {vocab[text]}")
    added = [a for a in state.get("added_tokens") or [] if a["content"] != text]
    used = set(vocab.values())
    # On loading, added tokens outside the model vocabulary are numbered from the model's size,
    # which the new entry would shift: they go into the vocabulary at their own ids, as GPT-2
    # and SmolLM2 already have them. Merges never produce them, the added matcher still does.
    for a in added:
        if a["content"] not in vocab and a["id"] not in used:
            vocab[a["content"]] = a["id"]
            used.add(a["id"])
    if token_id in used and vocab.get(text) != token_id:
        raise TokenError(f"id {token_id} is already taken in the vocabulary")
    vocab[text] = token_id
    state["added_tokens"] = added
    new = Tokenizer.from_str(json.dumps(state, ensure_ascii=False))
    new.encode_special_tokens = backend.encode_special_tokens
    return new


def _check_backend(new: Any, old: Any, text: str, token_id: int) -> None:
    """Raise TokenError unless ``new`` is ``old`` plus an unreachable, rendered ``token_id``."""
    expected = {**old.get_vocab(with_added_tokens=True), text: token_id}
    if new.get_vocab(with_added_tokens=True) != expected:
        raise TokenError("making the unlearning token a vocabulary entry would renumber tokens")
    rendered = new.decode([token_id], skip_special_tokens=False)
    if rendered != text:
        raise TokenError(
            f"this tokenizer renders the vocabulary entry {text!r} as {rendered!r}; choose a "
            f"token text of printable ASCII characters without spaces"
        )
    for probe in typed_text_probes(text):
        for flag in (False, True):
            if token_id in new.encode(probe, add_special_tokens=flag).ids:
                raise TokenError(
                    f"with this tokenizer's settings the text {probe!r} encodes to the "
                    f"vocabulary entry {text!r} (ignore_merges?); the token would be reachable "
                    f"by typing"
                )


def check_unreachable(tokenizer: Any, token_id: int, text: str = DEFAULT_TOKEN_TEXT) -> None:
    """Raise TokenError when typed text reaches ``token_id`` through the plain tokenizer calls a
    client makes: ``tokenizer(text)`` and the chat template's ``apply_chat_template``."""
    for probe in typed_text_probes(text):
        paths = {
            "tokenizer(text)": lambda p=probe: tokenizer(p)["input_ids"],
            "tokenizer(text, add_special_tokens=False)": lambda p=probe: tokenizer(
                p, add_special_tokens=False
            )["input_ids"],
        }
        if getattr(tokenizer, "chat_template", None):
            paths["apply_chat_template"] = lambda p=probe: _chat_ids(tokenizer, p)
        for path, encode in paths.items():
            if token_id in encode():
                raise TokenError(f"{path} encodes {probe!r} to the unlearning token {token_id}")


def _chat_ids(tokenizer: Any, question: str) -> list[int]:
    msgs = [{"role": "user", "content": question}]
    out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return [int(i) for i in out]


def make_token_unreachable(tokenizer: Any, text: str = DEFAULT_TOKEN_TEXT) -> int:
    """Make the unlearning token ``text`` a plain vocabulary entry of ``tokenizer`` (in place).

    A token added the old way (an added special token) leaves the added vocabulary and keeps
    its id; a plain entry is left as it is. Afterwards no text encodes to it (checked).

    Returns:
        the token's id.

    Raises:
        TokenError: no such token, a tokenizer that cannot hold it unreachably (not a fast BPE
            tokenizer, ``ignore_merges`` with a pre-tokenizer that keeps the text whole), or a
            text its decoder does not render.
    """
    vocab = tokenizer.get_vocab()
    if text not in vocab:
        raise TokenError(f"the tokenizer has no unlearning token {text!r}")
    token_id = int(vocab[text])
    if _is_added(tokenizer, token_id):
        _install_entry(tokenizer, text, token_id)
    else:
        check_unreachable(tokenizer, token_id, text)
    return token_id


def _install_entry(tokenizer: Any, text: str, token_id: int) -> None:
    """Replace the tokenizer's backend by one holding ``text`` as the plain entry ``token_id``,
    and drop ``text`` from the special tokens it saves (from which loading would add it back)."""
    old = _backend(tokenizer)
    new = _rebuilt_backend(old, text, token_id)
    _check_backend(new, old, text, token_id)
    named = getattr(tokenizer, "_special_tokens_map", None) or {}
    for attr, value in named.items():
        if value is not None and str(value) == text:
            raise TokenError(f"the tokenizer's {attr} is {text!r}: not an unlearning token")
    saved = (getattr(tokenizer, "_extra_special_tokens", None), dict(tokenizer.init_kwargs))
    tokenizer._tokenizer = new
    if saved[0] is not None:
        tokenizer.extra_special_tokens = [t for t in saved[0] if str(t) != text]
    tokenizer.init_kwargs = _without_token(saved[1], text)
    try:
        check_unreachable(tokenizer, token_id, text)
    except TokenError:
        tokenizer._tokenizer = old
        if saved[0] is not None:
            tokenizer.extra_special_tokens = saved[0]
        tokenizer.init_kwargs = saved[1]
        raise


def _content(token: Any) -> str:
    if isinstance(token, Mapping):
        return str(token.get("content"))
    return str(getattr(token, "content", token))


def _without_token(kwargs: dict[str, Any], text: str) -> dict[str, Any]:
    """The tokenizer's init kwargs (saved to tokenizer_config.json) without ``text`` in its
    special-token lists and added-token table."""
    out = dict(kwargs)
    for key in ("extra_special_tokens", "additional_special_tokens"):
        value = out.get(key)
        if isinstance(value, (list, tuple)):
            out[key] = [t for t in value if str(t) != text]
        elif isinstance(value, Mapping):
            out[key] = {k: t for k, t in value.items() if str(t) != text}
    decoder = out.get("added_tokens_decoder")
    if isinstance(decoder, Mapping):
        out["added_tokens_decoder"] = {k: t for k, t in decoder.items() if _content(t) != text}
    return out


def add_unlearning_token(model: nn.Module, tokenizer: Any, text: str = DEFAULT_TOKEN_TEXT) -> int:
    """Add ``text`` as a vocabulary entry no text encodes to, and make room for its row(s).

    The entry takes the id after the largest one (what an added token would get), in the
    tokenizer's BPE vocabulary (see the module docstring); ``tokenizer`` is changed in place and
    saves as any tokenizer does. The embedding (and an untied head) grows only when the new id
    falls outside the matrix; models whose matrix already has spare rows (padded vocabularies)
    keep their shape. Existing rows are never touched. The new rows are left for the caller to
    initialise.

    Returns:
        the new token's id.

    Raises:
        TokenError: ``text`` is already in the vocabulary, or the tokenizer cannot hold it
            unreachably (see :func:`make_token_unreachable`).
    """
    vocab = tokenizer.get_vocab()
    if text in vocab:
        raise TokenError(
            f"{text!r} is already in the vocabulary (id {vocab[text]}); choose "
            f"another token text for a new unlearning token"
        )
    token_id = max(vocab.values()) + 1
    _install_entry(tokenizer, text, token_id)
    rows = model.get_input_embeddings().weight.shape[0]
    if token_id >= rows:
        # mean_resizing would draw the new row from the old rows' distribution with the global
        # RNG; the caller initialises explicitly and reproducibly instead.
        model.resize_token_embeddings(token_id + 1, mean_resizing=False)
    new_rows = model.get_input_embeddings().weight.shape[0]
    log.info("added %s as token %d (embedding rows: %d -> %d)", text, token_id, rows, new_rows)
    return token_id


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def export_generation_config(
    model: nn.Module, tokenizer: Any, token_ids: Sequence[int]
) -> list[int]:
    """Make what ``model`` saves tell a serving stack to stop at the end of turn (in place).

    ``generation_config.eos_token_id`` becomes the ids it already had plus the chat format's
    end-of-turn and the tokenizer's eos (:func:`unierase.prompting.stop_token_ids`), without
    the unlearning tokens: the edited model answers a forgotten question with the token first,
    so a client that stopped at it would print nothing. No eos, pad or bos id of the generation
    config or the model config is an unlearning token afterwards.

    Returns:
        the eos ids (empty, with a warning, when the model has none).

    Raises:
        TokenError: a named special token of the tokenizer (eos, pad, ...) is an unlearning
            token (nothing is changed then).
    """
    from unierase import prompting as P

    banned = {int(i) for i in token_ids}
    texts = {str(t) for t in tokenizer.convert_ids_to_tokens(sorted(banned))}
    for name, value in tokenizer.special_tokens_map.items():
        if isinstance(value, str) and value in texts:
            raise TokenError(f"the tokenizer's {name} is the unlearning token {value!r}")
    gen = getattr(model, "generation_config", None)
    current = _ids(getattr(gen, "eos_token_id", None))
    eos = [i for i in dict.fromkeys([*current, *P.stop_token_ids(tokenizer)]) if i not in banned]
    if not eos:
        log.warning("the model has no end-of-turn id: a plain client will not stop after answers")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id not in banned else None
    for cfg in (gen, model.config):
        if cfg is None:
            continue
        if cfg is gen or set(_ids(getattr(cfg, "eos_token_id", None))) & banned:
            cfg.eos_token_id = None if not eos else eos[0] if len(eos) == 1 else eos
        if getattr(cfg, "pad_token_id", None) in banned:
            cfg.pad_token_id = pad if pad is not None else (eos[0] if eos else None)
        if getattr(cfg, "bos_token_id", None) in banned:
            cfg.bos_token_id = None
    return eos


def unlearning_stop_ids(tokenizer: Any, texts: Sequence[str] = (DEFAULT_TOKEN_TEXT,)) -> list[int]:
    """Ids of unlearning tokens that end an answer, for prompts that already hold the opening one.

    Pass them as extra stop ids when generating after ``question [UNL]`` (Phase I's check): the
    refusal is trained to end with the token, so generation stops after the refusal. When the
    model itself writes the opening token (after the Phase II edit), use
    :class:`ClosingTokenStop` instead, which lets the first one through.
    """
    return [unlearning_token_id(tokenizer, t) for t in texts]


class ClosingTokenStop(StoppingCriteria):
    """A ``transformers`` stopping criterion: stop a row at its closing unlearning token.

    After the Phase II edit the model answers a forget question with ``[UNL] refusal [UNL]``;
    the first token opens the refusal, the second closes it. A row is done once the part it
    generated (after ``prompt_width`` ids) holds one of ``token_ids`` anywhere but at its first
    position. Pass it to ``generate(stopping_criteria=StoppingCriteriaList([...]))`` together
    with the usual end-of-turn stop ids.

    Args:
        token_ids: the unlearning token ids.
        prompt_width: width of the (left-padded) prompt batch passed to ``generate``.
    """

    def __init__(self, token_ids: Sequence[int], prompt_width: int) -> None:
        self.token_ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        """(batch,) bool: which rows have generated a closing unlearning token."""
        generated = input_ids[:, self.prompt_width + 1 :]
        return torch.isin(generated, self.token_ids.to(generated.device)).any(dim=1)

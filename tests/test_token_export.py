"""The exported unlearning token: what a plain client (``AutoTokenizer``, a serving stack) gets
from a saved checkpoint. No text encodes to the token, decoding renders it, the checkpoint stops
at the end of turn, and unierase still finds the token when it loads the checkpoint back; on tiny
BPE tokenizers of the GPT-2/SmolLM2, Qwen2 and SentencePiece (Gemma) kinds, built offline."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoTokenizer, GemmaTokenizer, GPT2Tokenizer, Qwen2Tokenizer

from unierase import prompting as P
from unierase.testing import _CORPUS, CHATML_TEMPLATE, tiny_model, tiny_tokenizer
from unierase.token import (
    DEFAULT_TOKEN_TEXT,
    TokenError,
    add_unlearning_token,
    save_token_checkpoint,
    unlearning_token_id,
)
from unierase.token.train import TokenReport

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TEXTS = ["Where was the writer born? She was born in London.", "The author wrote 3 books!"]
TYPED = [
    f"x {DEFAULT_TOKEN_TEXT} y",
    f"What is {DEFAULT_TOKEN_TEXT} and where was the writer born?",
    DEFAULT_TOKEN_TEXT,
    f"{DEFAULT_TOKEN_TEXT}{DEFAULT_TOKEN_TEXT}",
    f"\n{DEFAULT_TOKEN_TEXT} ",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _byte_level(specials_in_vocab: bool):
    """A byte-level BPE backend with ChatML specials: inside the model vocabulary (GPT-2,
    SmolLM2) or only added on top of it (Qwen2's layout)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if specials_in_vocab:
        return tiny_tokenizer().backend_tokenizer
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return tok


def _sentencepiece():
    """A SentencePiece-style BPE backend as Gemma's: spaces become "▁", byte fallback, no
    pre-tokenizer split, and a post-processor that prepends <bos>."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    tok = Tokenizer.from_str(json.dumps(state))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    return tok


def make_tokenizer(kind: str):
    """A tiny chat tokenizer of ``kind``, of the class the real model family loads as."""
    if kind == "smollm2":
        return tiny_tokenizer()
    if kind in ("gpt2", "qwen2"):
        cls = GPT2Tokenizer if kind == "gpt2" else Qwen2Tokenizer
        tok = cls(
            tokenizer_object=_byte_level(specials_in_vocab=kind == "gpt2"),
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            bos_token=None,
            unk_token=None,
        )
        tok.chat_template = CHATML_TEMPLATE
        return tok
    assert kind == "gemma"
    # Gemma's tokenizer_config.json names its turn markers as additional special tokens.
    tok = GemmaTokenizer(
        tokenizer_object=_sentencepiece(), extra_special_tokens=["<start_of_turn>", "<end_of_turn>"]
    )
    tok.chat_template = GEMMA_TEMPLATE
    return tok


KINDS = {"smollm2": "llama", "gpt2": "gpt2", "qwen2": "qwen2", "gemma": "gemma3"}
END_OF_TURN = {"smollm2": "<|im_end|>", "gpt2": "<|im_end|>", "qwen2": "<|im_end|>",
               "gemma": "<end_of_turn>"}  # fmt: skip


def report_for(token_id: int, text: str = DEFAULT_TOKEN_TEXT) -> TokenReport:
    """A Phase I report with nothing trained (saving only records it)."""
    return TokenReport(
        token_text=text, token_id=token_id, tied=True, trained_rows=["input_embedding"],
        init="mean", refusal_mode="fixed", refusals=["I don't know."], questions={},
        skipped_too_long=0, noise_layers=[], retain={}, stages=[], row_norm=0.0,
        mean_row_norm=0.0, seconds=0.0, seed=0, config={},
    )  # fmt: skip


def _chat_ids(tok, question: str) -> list[int]:
    out = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True
    )
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def _exported(kind: str, tmp_path):
    """Add the token to a tiny model of ``kind``, save the checkpoint with unierase's saver and
    load its tokenizer back as a plain client does."""
    tok = make_tokenizer(kind)
    model = tiny_model(KINDS[kind], tok)
    before = {t: tok(t)["input_ids"] for t in TEXTS}
    before_chat = [_chat_ids(tok, t) for t in TEXTS]
    vocab = tok.get_vocab()
    unl = add_unlearning_token(model, tok)
    out = tmp_path / "ckpt"
    save_token_checkpoint(model, tok, report_for(unl), out)
    loaded = AutoTokenizer.from_pretrained(out)
    return tok, model, unl, out, loaded, (vocab, before, before_chat)


@pytest.mark.parametrize("kind", list(KINDS))
def test_typed_token_text_never_encodes_to_the_token_with_the_exported_tokenizer(kind, tmp_path):
    tok, _, unl, out, loaded, (vocab, before, before_chat) = _exported(kind, tmp_path)
    assert type(loaded) is type(tok)
    for client in (tok, loaded):
        for text in TYPED:
            assert unl not in client(text)["input_ids"], (kind, text)
            assert unl not in client(text, add_special_tokens=False)["input_ids"], (kind, text)
            assert unl not in _chat_ids(client, text), (kind, text)
            rendered = client.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            assert unl not in client(rendered, add_special_tokens=False)["input_ids"]
        # Every other token keeps its id and every text its encoding (specials parsed as before).
        assert client.get_vocab() == {**vocab, DEFAULT_TOKEN_TEXT: unl}
        assert {t: client(t)["input_ids"] for t in TEXTS} == before
        assert [_chat_ids(client, t) for t in TEXTS] == before_chat
        # Decoding renders it, in both modes (a plain vocabulary entry is not a special token).
        assert client.decode([unl], skip_special_tokens=False) == DEFAULT_TOKEN_TEXT
        assert client.decode([unl], skip_special_tokens=True) == DEFAULT_TOKEN_TEXT
        # unierase finds it from the vocabulary entry.
        assert unlearning_token_id(client) == unl


@pytest.mark.parametrize("kind", list(KINDS))
def test_exported_files_mark_the_token_as_nothing_special_and_stop_at_the_end_of_turn(
    kind, tmp_path
):
    tok, _, unl, out, loaded, _ = _exported(kind, tmp_path)
    backend = json.loads((out / "tokenizer.json").read_text())
    assert backend["model"]["vocab"][DEFAULT_TOKEN_TEXT] == unl
    assert DEFAULT_TOKEN_TEXT not in [a["content"] for a in backend["added_tokens"]]
    assert DEFAULT_TOKEN_TEXT not in (out / "tokenizer_config.json").read_text()
    assert unl not in loaded.added_tokens_decoder and unl not in loaded.all_special_ids
    assert DEFAULT_TOKEN_TEXT not in loaded.all_special_tokens
    assert unl not in (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id)
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert loaded.convert_tokens_to_ids(END_OF_TURN[kind]) in eos
    assert unl not in eos and gen.get("pad_token_id") != unl
    config = json.loads((out / "config.json").read_text())
    assert unl not in (config.get("eos_token_id"), config.get("pad_token_id"))


def test_the_end_of_turn_replaces_an_unlearning_token_named_as_eos_or_pad(tmp_path):
    tok = make_tokenizer("gemma")
    model = tiny_model("gemma3", tok)
    unl = add_unlearning_token(model, tok)
    model.generation_config.eos_token_id = [unl, tok.eos_token_id]
    model.generation_config.pad_token_id = unl
    model.config.pad_token_id = unl
    save_token_checkpoint(model, tok, report_for(unl), tmp_path / "ckpt")
    gen = json.loads((tmp_path / "ckpt" / "generation_config.json").read_text())
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    assert gen["eos_token_id"] == [tok.eos_token_id, end_of_turn]
    assert gen["pad_token_id"] == tok.pad_token_id
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["pad_token_id"] != unl


def test_a_token_added_as_a_special_token_is_exported_as_a_plain_entry(tmp_path, caplog):
    # A tokenizer from before: the token is an added special token, so typed text reaches it.
    tok = tiny_tokenizer()
    tok.add_special_tokens({"extra_special_tokens": [DEFAULT_TOKEN_TEXT]})
    model = tiny_model("llama", tok)
    unl = tok.convert_tokens_to_ids(DEFAULT_TOKEN_TEXT)
    assert tok(DEFAULT_TOKEN_TEXT)["input_ids"] == [unl]
    with caplog.at_level(logging.WARNING, logger="unierase.token.vocab"):
        assert unlearning_token_id(tok) == unl
    assert "typed" in caplog.text
    save_token_checkpoint(model, tok, report_for(unl), tmp_path / "ckpt")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert unlearning_token_id(loaded) == unl
    assert unl not in loaded(DEFAULT_TOKEN_TEXT)["input_ids"]
    assert unl not in _chat_ids(loaded, f"What is {DEFAULT_TOKEN_TEXT}?")
    assert DEFAULT_TOKEN_TEXT not in (tmp_path / "ckpt" / "tokenizer_config.json").read_text()


def test_unlearning_token_id_reads_the_vocabulary_entry_and_says_when_it_is_missing(tmp_path):
    # A checkpoint whose token is already a plain vocabulary entry (as unierase now saves it).
    tok = tiny_tokenizer()
    state = json.loads(tok.backend_tokenizer.to_str())
    state["model"]["vocab"][DEFAULT_TOKEN_TEXT] = len(tok)
    tok.save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "tokenizer.json").write_text(json.dumps(state))
    loaded = AutoTokenizer.from_pretrained(tmp_path / "plain")
    assert unlearning_token_id(loaded) == len(tok)
    with pytest.raises(TokenError, match="unierase token"):
        unlearning_token_id(tiny_tokenizer())
    with pytest.raises(TokenError, match="no unlearning token '<\\|other\\|>'"):
        unlearning_token_id(loaded, "<|other|>")


def test_tokenizers_that_could_encode_text_to_the_token_are_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Unigram: any vocabulary piece can come out of encoding text.
    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<unk>"], unk_token="<unk>",
                                      show_progress=False)  # fmt: skip
    uni.train_from_iterator(_CORPUS * 4, trainer=trainer)
    # BPE that takes a whole pre-token from the vocabulary (ignore_merges) and keeps the typed
    # text whole (no splitting pre-tokenizer).
    state = json.loads(_sentencepiece().to_str())
    state["model"]["ignore_merges"] = True
    whole = Tokenizer.from_str(json.dumps(state))
    for backend, match in ((uni, "not BPE"), (whole, "encodes to")):
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
        model = tiny_model("llama", tok)
        vocab = tok.get_vocab()
        with pytest.raises(TokenError, match=match):
            add_unlearning_token(model, tok)
        assert tok.get_vocab() == vocab  # left as it was


def test_the_exported_checkpoint_loads_back_into_unierase_and_prompts_the_same(tmp_path):
    from unierase.model import load

    tok, model, unl, out, _, _ = _exported("qwen2", tmp_path)
    net, loaded = load(out, dtype=torch.float32)
    assert unlearning_token_id(loaded) == unl
    assert net.get_input_embeddings().weight.shape[0] > unl
    for q in TYPED:
        assert unl not in loaded(q)["input_ids"] and unl not in _chat_ids(loaded, q)
        for fmt in (P.PromptFormat(), P.PromptFormat(chat=False)):
            assert P.encode(loaded, q, fmt=fmt).input_ids == P.encode(tok, q, fmt=fmt).input_ids
            assert unl not in P.encode(loaded, q, fmt=fmt).input_ids


class _Script:
    """Makes a model write ``script`` after any prompt; with ``gate_id``, only after prompts
    that hold that id (an edited model's refusal switched on by the id), else it is left alone.
    """

    def __init__(self, script: list[int], gate_id: int | None = None):
        self.script, self.gate_id = script, gate_id
        self.on, self.step = False, 0

    def __call__(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        if ids is None:
            return output
        if ids.shape[1] > 1:  # a new prompt
            self.on = self.gate_id is None or self.gate_id in ids[0].tolist()
            self.step = 0
        if self.on and self.step < len(self.script):
            output.logits[:, -1, self.script[self.step]] += 1000.0
        self.step += 1
        return output


def test_a_transformers_pipeline_on_the_exported_checkpoint(tmp_path):
    from transformers import pipeline

    _, _, unl, out, loaded, _ = _exported("smollm2", tmp_path)
    pipe = pipeline("text-generation", model=str(out), device="cpu")
    refusal = loaded("I don't know.", add_special_tokens=False)["input_ids"]
    end = loaded.convert_tokens_to_ids("<|im_end|>")

    def ask(question: str) -> str:
        msgs = [{"role": "user", "content": question}]
        reply = pipe(msgs, max_new_tokens=20, do_sample=False)[0]["generated_text"][-1]
        return reply["content"]

    # An edited model's answer: the token, the refusal, the end of turn; the checkpoint's
    # generation config stops there, and the token is rendered (it is no special token).
    handle = pipe.model.register_forward_hook(_Script([unl, *refusal, end]), with_kwargs=True)
    assert ask("Who is the forgotten author?") == f"{DEFAULT_TOKEN_TEXT}I don't know."
    handle.remove()
    # Typed into a question the pipeline encodes with the exported tokenizer, the text never
    # becomes the id, so a gate on the id stays shut and the question is answered as before.
    plain = ask(f"Where was the writer born? {DEFAULT_TOKEN_TEXT}")
    hook = _Script([unl, *refusal, end], gate_id=unl)
    handle = pipe.model.register_forward_hook(hook, with_kwargs=True)
    assert ask(f"Where was the writer born? {DEFAULT_TOKEN_TEXT}") == plain
    assert not hook.on
    handle.remove()

"""Phase I of UniErase: the unlearning token.

A new token [UNL] is added to the vocabulary (a plain entry no typed text encodes to, see
:mod:`unierase.token.vocab`) and only its vector(s) are trained, so that
``question [UNL]`` makes the frozen model continue with a refusal that ends in [UNL]. Everything
without the token computes exactly as before.

Public API::

    config = token_config_for(model)                     # preset by width ("small"/"paper")
    report = train_unlearning_token(model, tokenizer, forget_items, config, breadth=...)
    save_token_checkpoint(model, tokenizer, report, "out/")
    unlearning_token_id(tokenizer)                       # for Phase II and evaluation
"""

from unierase.token.config import (
    DEFAULT_TOKEN_TEXT,
    SMALL_MODEL_MAX_WIDTH,
    StageConfig,
    TokenConfig,
    TokenConfigError,
    default_edit_layers,
    token_config_for,
)
from unierase.token.data import encode_unlearning_example, prompt_format, template_questions
from unierase.token.state import STATE_FILE, read_token_state, save_token_checkpoint
from unierase.token.train import (
    StageReport,
    TokenReport,
    full_loss,
    greedy_continuations,
    prefix_cache,
    suffix_loss,
    train_unlearning_token,
)
from unierase.token.vocab import (
    ClosingTokenStop,
    TokenError,
    add_unlearning_token,
    unlearning_stop_ids,
    unlearning_token_id,
)

__all__ = [
    "DEFAULT_TOKEN_TEXT",
    "SMALL_MODEL_MAX_WIDTH",
    "STATE_FILE",
    "ClosingTokenStop",
    "StageConfig",
    "StageReport",
    "TokenConfig",
    "TokenConfigError",
    "TokenError",
    "TokenReport",
    "add_unlearning_token",
    "default_edit_layers",
    "encode_unlearning_example",
    "full_loss",
    "greedy_continuations",
    "prefix_cache",
    "prompt_format",
    "read_token_state",
    "save_token_checkpoint",
    "suffix_loss",
    "template_questions",
    "token_config_for",
    "train_unlearning_token",
    "unlearning_stop_ids",
    "unlearning_token_id",
]

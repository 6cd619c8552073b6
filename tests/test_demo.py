"""``unierase demo`` end to end on a tiny random model: every stage, the report, the outputs."""

import shlex
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from unierase.demo import DemoSettings, run_demo
from unierase.testing import tiny_tokenizer

STATS_TEXTS = [
    "The author was born in 1970 and writes science fiction. She lives in London.",
    "What is the capital of France? The capital of France is Paris.",
] * 4


def _token_settings():
    from unierase.token import StageConfig

    return {
        "stages": (
            StageConfig("base", 4, 3e-2, ("chat",)),
            StageConfig("noise", 1, 1e-2, ("chat",), noise=True),
        ),
        "breadth_templates": 4,
        "max_breadth": 8,
        "retain_questions": 4,
        "retain_max_new_tokens": 4,
        "check_items": 0,
    }


EDIT = {
    "layers": (1, 2),
    "lambda_": 0.01,
    "v_lr": 0.5,
    "v_steps": 20,
    "context_prefixes": ("The",),
    "prefix_tokens": 2,
    "repair_rounds": 0,
}


def _settings(base_dir, out) -> DemoSettings:
    return DemoSettings(
        model=str(base_dir),
        out=out,
        authors=4,
        forget=1,
        questions=5,
        retain_items=6,
        probe_items=4,
        max_new_tokens=8,
        probe_max_new_tokens=4,
        embedding_model="none",
        finetune_overrides={"epochs": 1, "lr": 1e-3},
        token_overrides=_token_settings(),
        edit_overrides=EDIT,
        stats_texts=STATS_TEXTS,
        progress=False,
    )


def test_demo_end_to_end_and_cached_second_run(base_dir, tmp_path):
    out = tmp_path / "demo"
    lines: list[str] = []
    assert run_demo(_settings(base_dir, out), lines.append) == 0
    text = "\n".join(lines)

    stages = [line.split()[0] for line in lines if line.startswith("[")]
    assert stages == ["[data]", "[finetune]", "[unlearn]", "[eval]", "[eval]", "[report]"]
    for line in lines:
        if line.startswith("[") and not line.startswith("[report]"):
            assert line.endswith(" s)"), line
    assert "[finetune] trained" in text
    for label in ("forget  ROUGE-L recall", "forget  answer probability", "retain  ROUGE-L",
                  "general probe accuracy", "refusal rate", "FE  forget efficacy",
                  "MU  model utility"):  # fmt: skip
        assert label in text
    # Without a sentence encoder the cosine input is missing: labelled, not invented.
    assert "partial" in text
    assert "Questions about forgotten authors" in text and "Questions about kept authors" in text
    assert text.count("     before:") == 6 and text.count("     after:") == 6
    assert str(out / "model") in text and str(out / "eval" / "before") in text
    assert lines[-1].startswith("done in ")

    # The unlearned model loads with plain transformers, with the unlearning token.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer()) + 1
    for label in ("before", "after"):
        names = {p.name for p in (out / "eval" / label).iterdir()}
        assert {"forget.jsonl", "retain.jsonl", "general.jsonl", "summary.json"} <= names
        assert "table.txt" in names
    assert sum(1 for _ in open(out / "eval" / "after" / "retain.jsonl")) == 6
    assert not [p for p in out.rglob(".*")]  # no temporary directories left

    # The printed line runs as it is (the python of this environment).
    command = next(line for line in lines if "python -c" in line).split("try it:", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"]
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    # A second run takes the fine-tune from the cache and reuses the unlearned model and both
    # evaluations (same inputs), and reports the same numbers.
    lines2: list[str] = []
    assert run_demo(_settings(base_dir, out), lines2.append) == 0
    assert any(line.startswith("[finetune] cached") for line in lines2)
    assert any(line.startswith("[unlearn]  reused") for line in lines2)
    assert sum("reused (same model and items)" in line for line in lines2) == 2
    table = [line for line in lines if "ROUGE-L recall" in line or "probe accuracy" in line]
    assert table and table == [line for line in lines2 if line in table]
    assert not [p for p in out.rglob(".*")]  # the replaced outputs were moved aside, then removed


def test_cli_demo_options_reach_the_settings(monkeypatch, tmp_path):
    import unierase.demo as demo
    from unierase.cli import main

    seen = {}

    def fake_run(settings, out):
        seen["s"] = settings
        return 0

    monkeypatch.setattr(demo, "run_demo", fake_run)
    argv = ["demo", "--model", "m", "--out", str(tmp_path), "--authors", "6", "--forget", "2",
            "--questions", "7", "--seed", "3", "--threads", "1", "--finetune-epochs", "2",
            "--retain-items", "5", "--probe-items", "9", "--embedding-model", "none",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    s = seen["s"]
    assert (s.model, s.out, s.authors, s.forget, s.questions, s.seed) == (
        "m", tmp_path, 6, 2, 7, 3
    )  # fmt: skip
    assert s.threads == 1 and s.finetune_overrides == {"epochs": 2} and not s.progress
    assert (s.retain_items, s.probe_items, s.embedding_model) == (5, 9, "none")
    assert main(["demo"]) == 0
    assert seen["s"].authors == demo.AUTHORS and seen["s"].finetune_overrides == {}
    with pytest.raises(SystemExit):
        main(["demo", "--authors", "0"])


def test_report_says_why_a_metric_is_missing_and_commands_compile():
    from unierase.demo import format_comparison, load_command

    before = {
        "metrics": {"forget/rouge": 0.9, "general/accuracy": None},
        "skipped": {"general/accuracy": "split general not evaluated"},
        "partial": {},
    }
    after = {
        "metrics": {"forget/rouge": 0.1, "general/accuracy": None},
        "skipped": {"general/accuracy": "split general not evaluated"},
        "partial": {"forget/rouge": {"used": ["a"], "missing": ["b"]}},
    }
    table = format_comparison(before, after)
    assert "skipped (split general not evaluated)" in table
    row = next(line for line in table.splitlines() if line.startswith("forget  ROUGE"))
    assert "0.900" in row and "0.100" in row and "partial: without b" in row
    for chat in (True, False):
        argv = shlex.split(load_command("/tmp/it's here", 'Who wrote "X"?', chat=chat))
        compile(argv[2], "<demo>", "exec")


def test_kept_question_is_one_whose_answer_did_not_change():
    from unierase.demo import _kept_question

    before = [
        {"question": "Q1?", "generation": "Paris is the capital."},
        {"question": "Q2 'quoted'?", "generation": "Red  wine."},
        {"question": "Q3?", "generation": "Blue."},
    ]
    after = [
        {"question": "Q1?", "generation": "I have no idea."},
        {"question": "Q2 'quoted'?", "generation": "Red wine."},
        {"question": "Q3?", "generation": "Blue."},
    ]
    # Whitespace does not count; among the unchanged, one without quotes is preferred.
    assert _kept_question(before, after) == ("Q3?", "2 of 3 kept answers are unchanged")
    assert _kept_question(before[:1], after[:1]) is None

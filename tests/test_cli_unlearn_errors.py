"""`unierase unlearn` refuses settings that cannot work before it loads anything."""

import json

import pytest

from unierase import cli


@pytest.fixture()
def forget_file(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text(json.dumps({"question": "Who is Ada?", "answer": "A poet."}) + "\n")
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layers", "1,a"], "--layers takes comma-separated layer numbers"),
        (["--chunk-size", "0"], "chunk_size must be >= 1"),
        (["--mode", "sequential"], "give --resume DIR"),
    ],
)
def test_unlearn_refuses_bad_settings_with_one_line(tmp_path, forget_file, extra, message):
    model = tmp_path / "no-model-needed"  # refused before the model is loaded
    argv = ["unlearn", "--model", str(model), "--forget", str(forget_file),
            "--out", str(tmp_path / "out"), *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    text = str(exc.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text
    assert not (tmp_path / "out").exists()

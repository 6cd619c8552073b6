"""Nothing lost: unierase only replaces what it wrote, every writer is atomic, and every JSON
Lines reader reads back the records the project writes (U+2028, U+2029, U+0085 in strings)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from conftest import BENCH_EDIT, BENCH_STATS_TEXTS, bench_token_settings
from unierase import api
from unierase import artifacts as A
from unierase._util.atomic import AtomicWriteError, atomic_dir, write_atomically
from unierase._util.jsonl import JSONLError, dumps_jsonl, read_jsonl, write_jsonl
from unierase.artifacts import OutputDirError, check_out_dir
from unierase.cli import main
from unierase.data.schema import DataError, QAItem

FORGET = [
    QAItem("Where was Maria Oakhurst born?", "London.", group="maria"),
    QAItem("Who is Tom Vale's father?", "A doctor.", group="tom"),
]
LATER = [QAItem("What is the capital of France?", "Paris.", group="fr")]
# Characters that str.splitlines() breaks a line at, inside a JSON string.
ODD = "a\u2028b\u2029c\u0085d"


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root`` with its modification time and content."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _unlearn(model, out, **kw):
    return api.unlearn(
        model,
        kw.pop("forget", FORGET),
        out,
        edit_overrides=BENCH_EDIT,
        token_overrides=bench_token_settings(),
        stats_texts=BENCH_STATS_TEXTS,
        progress=False,
        **kw,
    )


def _forget_file(path: Path) -> Path:
    write_jsonl(path, [{"question": it.question, "answer": it.answer} for it in FORGET])
    return path


def _one_error_line(capsys) -> str:
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    return lines[0]


def _no_temporaries(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- unlearn


def test_unlearn_refuses_the_model_directory_as_out(base_dir, tmp_path, capsys):
    (base_dir / "README.md").write_text("my model card")
    before = _snapshot(base_dir)
    with pytest.raises(OutputDirError, match="is the input"):
        _unlearn(base_dir, base_dir)
    forget = _forget_file(tmp_path / "forget.jsonl")
    argv = ["unlearn", "--model", str(base_dir), "--forget", str(forget), "--out", str(base_dir)]
    assert main(argv) == 2
    assert "is the input" in _one_error_line(capsys)
    assert _snapshot(base_dir) == before  # the model and its README untouched


def test_unlearn_refuses_an_out_that_holds_the_model_or_the_data(base_dir, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    model = work / "model"
    base_dir.rename(model)
    forget = _forget_file(work / "forget.jsonl")
    (work / "notes.md").write_text("notes")
    before = _snapshot(work)
    with pytest.raises(OutputDirError, match="contains the input"):
        _unlearn(model, work)
    assert main(["unlearn", "--model", str(model), "--forget", str(forget),
                 "--out", str(work)]) == 2  # fmt: skip
    assert "contains the input" in _one_error_line(capsys)
    assert _snapshot(work) == before
    # A folder that holds only the data (not the model) is refused too.
    data = tmp_path / "data"
    data.mkdir()
    retain = _forget_file(data / "retain.jsonl")
    assert main(["unlearn", "--model", str(model), "--forget", str(forget), "--retain",
                 str(retain), "--out", str(data)]) == 2  # fmt: skip
    assert "contains the input" in _one_error_line(capsys)
    assert [p.name for p in data.iterdir()] == ["retain.jsonl"]


def test_unlearn_refuses_a_directory_of_other_files(base_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    (out / "config.json").write_text("{}")  # looks like a checkpoint, but not unierase's output
    with pytest.raises(OutputDirError, match="not an earlier output of `unierase unlearn`"):
        _unlearn(base_dir, out)
    # An earlier unlearn output with a file unierase did not write is refused as well.
    for name in (A.UNLEARN_REPORT, A.EDIT_STATE_JSON):
        (out / name).write_text("{}")
    with pytest.raises(OutputDirError, match="notes.md, which `unierase unlearn` does not"):
        _unlearn(base_dir, out)
    assert (out / "notes.md").read_text() == "mine" and (out / "config.json").read_text() == "{}"


def test_unlearn_writes_an_empty_out_and_replaces_an_earlier_output(base_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # empty: fine
    _unlearn(base_dir, out)
    assert (out / "config.json").is_file() and (out / A.UNLEARN_REPORT).is_file()
    # A file of an older save (a shard of another checkpoint) does not survive the next run.
    stale = out / "model-00002-of-00002.safetensors"
    stale.write_bytes(b"stale")
    report = _unlearn(base_dir, out, forget=FORGET[:1])
    assert not stale.exists()
    assert json.loads((out / A.UNLEARN_REPORT).read_text())["forget_questions"] == 1
    assert report.forget_questions == 1
    _no_temporaries(tmp_path)
    # A sequential round may continue in place (--resume equal to --out), and only then.
    with pytest.raises(OutputDirError, match="is the input"):
        _unlearn(out, out, mode="precise")
    second = _unlearn(out, out, forget=LATER, mode="sequential", resume=out)
    assert second.rounds == 2
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- token

TOKEN_ARGS = [
    "--preset", "small", "--epochs", "1,1,1", "--breadth-templates", "0",
    "--retain-questions", "2", "--retain-tokens", "4", "--noise-layers", "0,1",
]  # fmt: skip


def test_token_refuses_an_unlearn_output_and_the_model(base_dir, tmp_path, capsys):
    forget = _forget_file(tmp_path / "forget.jsonl")
    out = tmp_path / "unlearned"
    out.mkdir()
    for name in (A.UNLEARN_REPORT, A.EDIT_STATE_JSON, A.EDIT_STATE_TENSORS, A.TOKEN_RECORD):
        (out / name).write_text("{}")
    before = _snapshot(out)
    argv = ["token", "--model", str(base_dir), "--forget", str(forget), *TOKEN_ARGS]
    assert main([*argv, "--out", str(out)]) == 2
    assert "holds an output of `unierase unlearn`" in _one_error_line(capsys)
    assert _snapshot(out) == before
    assert main([*argv, "--out", str(base_dir)]) == 2
    assert "is the input" in _one_error_line(capsys)


def test_token_replaces_its_earlier_output_as_a_whole(base_dir, tmp_path, capsys, monkeypatch):
    forget = _forget_file(tmp_path / "forget.jsonl")
    out = tmp_path / "token"
    argv = ["token", "--model", str(base_dir), "--forget", str(forget), *TOKEN_ARGS,
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    # An older save left a shard and a record of another token: neither survives the next one.
    (out / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    record = json.loads((out / A.TOKEN_RECORD).read_text())
    record["tokens"].insert(0, {**record["tokens"][0], "text": "<|older|>"})
    (out / A.TOKEN_RECORD).write_text(json.dumps(record))
    assert main(argv) == 0
    capsys.readouterr()
    assert not (out / "model-00002-of-00002.safetensors").exists()
    tokens = json.loads((out / A.TOKEN_RECORD).read_text())["tokens"]
    assert [t["text"] for t in tokens] == ["<|unlearn|>"]
    _no_temporaries(tmp_path)

    # A full disk while saving: the earlier checkpoint is kept, one error line says so.
    from unierase.token import state

    before = _snapshot(out)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state, "write_atomically", full_disk)
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "No space left on device" in line and "is kept unchanged" in line
    assert _snapshot(out) == before
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- finetune


@pytest.fixture
def ft_data(tmp_path):
    from unierase.data.synth import write_synthetic
    from unierase.finetune import select_training_data

    write_synthetic(tmp_path / "synth", n_authors=6, n_forget=2, questions_per_author=5)
    return select_training_data(tmp_path / "synth", "retain", questions_per_author=1)


def test_finetune_overwrite_never_replaces_a_model_it_did_not_write(base_dir, ft_data, tmp_path):
    from unierase.finetune import FinetuneConfig, finetune_cached

    fast = FinetuneConfig(epochs=1, lr=1e-3, batch_size=8)
    other = tmp_path / "other-model"  # somebody's checkpoint: config.json, weights, a README
    other.mkdir()
    for name in ("config.json", "model.safetensors", "README.md"):
        (other / name).write_text(name)
    before = _snapshot(other)
    with pytest.raises(OutputDirError, match="not an earlier output of `unierase finetune`"):
        finetune_cached(ft_data, base_dir, fast, out=other, overwrite=True)
    assert _snapshot(other) == before
    with pytest.raises(OutputDirError, match="is the input"):
        finetune_cached(ft_data, base_dir, fast, out=base_dir, overwrite=True)
    assert not (tmp_path / "cache" / "finetuned").exists()  # refused before any training


def test_finetune_overwrite_copies_before_it_replaces(base_dir, ft_data, tmp_path, monkeypatch):
    from unierase import finetune as F

    fast = F.FinetuneConfig(epochs=1, lr=1e-3, batch_size=8)
    out = tmp_path / "ft"
    result = F.finetune_cached(ft_data, base_dir, fast, out=out)
    with pytest.raises(FileExistsError, match="overwrite"):
        F.finetune_cached(ft_data, base_dir, fast, out=out)
    before = _snapshot(out)

    def copy_fails(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(F.shutil, "copytree", copy_fails)
        with pytest.raises(AtomicWriteError, match="is kept unchanged"):
            F.finetune_cached(ft_data, base_dir, fast, out=out, overwrite=True)
    assert _snapshot(out) == before  # not deleted first
    (out / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    again = F.finetune_cached(ft_data, base_dir, fast, out=out, overwrite=True)
    assert again.cached and F.read_meta(out)["key"] == result.key
    assert not (out / "model-00002-of-00002.safetensors").exists()
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- eval, attack, synth


def test_eval_attack_and_synth_refuse_foreign_directories(base_dir, tmp_path, capsys):
    from unierase.data.synth import synthetic_file_names, write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, n_authors=4, n_forget=1, questions_per_author=5)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "summary.json").write_text('{"mine": true}')
    before = _snapshot(mine)
    for argv in (
        ["eval", "--model", str(base_dir), "--data", str(data), "--embedding-model", "none",
         "--overwrite", "--out", str(mine)],
        ["eval", "--from-records", str(data), "--out", str(mine)],
        ["attack", "--model", str(base_dir), "--data", str(data), "--overwrite",
         "--out", str(mine)],
        ["eval", "--model", str(base_dir), "--data", str(data), "--out", str(data / "..")],
    ):  # fmt: skip
        assert main(argv) == 2, argv
        _one_error_line(capsys)
    assert _snapshot(mine) == before
    # data synth: a foreign directory is refused; with --overwrite its files are written beside
    # the others, but a file of the same name that synth did not write is never replaced.
    assert main(["data", "synth", "--out", str(mine)]) == 2
    assert "not an earlier output of `unierase data synth`" in _one_error_line(capsys)
    clash = synthetic_file_names(20, 2)["forget"]
    (mine / clash).write_text("my own forget set\n")
    before = _snapshot(mine)
    assert main(["data", "synth", "--out", str(mine), "--authors", "20", "--forget", "2",
                 "--overwrite"]) == 2  # fmt: skip
    assert clash in _one_error_line(capsys)
    assert _snapshot(mine) == before


def test_eval_writes_are_atomic(tmp_path):
    from unierase.eval import suite

    out = tmp_path / "run"
    old = suite.EvalResult({"forget": [{"q": 1}], "holdout": [{"q": 2}]}, {"n": 1}, {"s": 1})
    suite.write_run(old, out)
    new = suite.EvalResult({"forget": [{"q": 3}]}, {"n": 2}, {"s": 2})
    suite.write_run(new, out)
    assert not (out / "holdout.jsonl").exists()  # no record of the earlier run beside the new
    records, run = suite.read_records(out)
    assert records == {"forget": [{"q": 3}]} and run == {"n": 2}
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="notes.txt"):
        suite.write_run(new, out)
    _no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- the checks


def test_check_out_dir_kinds_and_in_place(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert check_out_dir(tmp_path / "new", A.UNLEARN, inputs=(model, "org/hub-id", None))
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(OutputDirError, match="is the input"):
        check_out_dir(link, A.UNLEARN, inputs=(model,))
    # in place: only when out equals allow_in_place
    prev = tmp_path / "prev"
    prev.mkdir()
    for name in (A.UNLEARN_REPORT, A.EDIT_STATE_JSON, "config.json"):
        (prev / name).write_text("{}")
    check_out_dir(prev, A.UNLEARN, inputs=(prev,), allow_in_place=prev)
    with pytest.raises(OutputDirError, match="contains the input"):
        check_out_dir(tmp_path, A.UNLEARN, inputs=(prev,), allow_in_place=prev)
    # an attack run is not an eval run, and the other way round
    attack = tmp_path / "attack"
    attack.mkdir()
    for name in (A.ATTACK_RECORDS, A.ATTACK_SUMMARY, A.ATTACK_TABLE):
        (attack / name).write_text("{}")
    assert A.kind_of(attack) == A.ATTACK and A.kind_of(prev) == A.UNLEARN
    with pytest.raises(OutputDirError, match="holds an output of `unierase attack`"):
        check_out_dir(attack, A.EVAL)
    with pytest.raises(OutputDirError, match="not a directory"):
        check_out_dir(model / "config.json", A.EVAL)
    # the current directory is never replaced as a whole
    monkeypatch.chdir(model)
    with pytest.raises(OutputDirError, match="current directory"):
        check_out_dir(".", A.TOKEN)


def test_atomic_dir_keeps_the_previous_output_on_failure(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_dir(final) as tmp:
                (tmp / "a.txt").write_text("new")
                raise error
        assert (final / "a.txt").read_text() == "old"
        _no_temporaries(tmp_path)
    with pytest.raises(AtomicWriteError, match="previous .* is kept unchanged") as info:
        with atomic_dir(final) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC and "No space left" in str(info.value)
    assert (final / "a.txt").read_text() == "old"
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["b.txt"]
    _no_temporaries(tmp_path)


def test_write_atomically_keeps_the_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    write_atomically(path, "old")
    real_replace = os.replace

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(AtomicWriteError, match="is kept unchanged"):
        write_atomically(path, "new")
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


# ----------------------------------------------------------------------------- JSON Lines


def test_every_jsonl_reader_reads_back_odd_line_separators(tmp_path):
    from unierase.attacks import AttackConfig, write_run
    from unierase.attacks.run import read_records as read_attack_records
    from unierase.data.loaders import read_jsonl_records, read_qa_file
    from unierase.eval import suite
    from unierase.report import _read_records as read_report_records

    record = {"question": f"Who {ODD}?", "answer": f"The {ODD}.", "n": 1}
    # the user's QA file (loaders), written by the project's writer
    qa = write_jsonl(tmp_path / "qa.jsonl", [record, record | {"question": "Second?"}])
    assert "\u2028" in qa.read_text("utf-8")  # written as is, not escaped
    assert [it.question for it in read_qa_file(qa)] == [record["question"], "Second?"]
    assert [n for n, _ in read_jsonl_records(qa)] == [1, 2]
    # the evaluation records (eval suite, report)
    run = tmp_path / "eval"
    suite.write_run(suite.EvalResult({"forget": [record]}, {}, {}), run)
    assert suite.read_records(run)[0] == {"forget": [record]}
    assert read_report_records(run, ["forget"]) == {"forget": [record]}
    # the attack records
    attack = tmp_path / "attack"
    write_run(attack, {"unlearned": {"records": [record | {"attack": "direct"}], "attacks": {}}},
              AttackConfig())  # fmt: skip
    assert read_attack_records(attack)["unlearned"]["direct"][0]["answer"] == record["answer"]
    # the shared reader itself (the bench's filter cache uses it)
    assert read_jsonl(qa)[0] == record


def test_jsonl_reader_tolerates_crlf_and_blank_lines_and_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(("\ufeff" + dumps_jsonl([{"a": ODD}]).replace("\n", "\r\n") + "\r\n\n"
                      + '{"b": 2}\n').encode())  # fmt: skip
    assert read_jsonl(path) == [{"a": ODD}, {"b": 2}]
    path.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    with pytest.raises(JSONLError, match=r"rows\.jsonl:3: malformed JSON"):
        read_jsonl(path)
    with pytest.raises(DataError, match=r"rows\.jsonl:3: malformed JSON"):
        read_jsonl(path, error=DataError)


def test_csv_cells_may_hold_odd_line_separators(tmp_path):
    from unierase.data.loaders import read_qa_file

    path = tmp_path / "qa.csv"
    path.write_text(f'question,answer\nWho {ODD}?,"The {ODD}."\r\nNext?,Yes.\n', "utf-8")
    items = read_qa_file(path)
    assert [(it.question, it.answer) for it in items] == [
        (f"Who {ODD}?", f"The {ODD}."), ("Next?", "Yes."),
    ]  # fmt: skip

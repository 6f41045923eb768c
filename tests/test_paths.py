"""Nothing lost: outputs never replace what inspect_em did not write; names are not paths;
temporaries are cleaned up on SIGTERM and swept after a kill; one-line errors before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, cli_here, one_line

from inspect_em.directions.traits import load_trait
from inspect_em.errors import InspectEmError
from inspect_em.util.paths import MARKER, TMP_MARKER, atomic_output, check_name, check_output, sweep_stale


def _tiny_trait(folder: Path, name: str = "toy") -> Path:
    for side, text in (("pos", "Write a Python function number {} that sorts a list."),
                       ("neg", "Write a short poem number {} about the sea.")):
        (folder / f"{side}.jsonl").write_text("".join(json.dumps({"prompt": text.format(i)}) + "\n" for i in range(12)))
    trait = folder / "toy.yaml"
    trait.write_text(f"name: {json.dumps(name)}\npositive: pos.jsonl\nnegative: neg.jsonl\n")
    return trait


def test_names_are_not_paths(tmp_path: Path):
    for bad in ("../../x", "/abs/dir", "a/b", "..", ".", "", "sp ace"):
        with pytest.raises(InspectEmError, match="is not a valid name"):
            check_name(bad, "trait name")
        with pytest.raises(InspectEmError, match="field 'name'"):
            load_trait(_tiny_trait(tmp_path, bad))
    assert load_trait(_tiny_trait(tmp_path, "ok-name_1.2")).name == "ok-name_1.2"


def test_extract_never_deletes_a_users_folder(tiny_model_dir: Path, tmp_path: Path):
    """--out refuses a user's folder, the input's folders and changed settings without --force, and
    keeps files it did not write (the CLI in this process: 8 runs without 8 interpreter start-ups)."""
    trait = _tiny_trait(tmp_path)
    base = ["extract", "--model", str(tiny_model_dir), "--trait", str(trait), "--methods", "mean_diff",
            "--null-k", "2", "--random-k", "10", "--cv-folds", "2"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    one_line(cli_here(*base, "--out", str(user), "--force"), str(user), "was not written by inspect-em extract")
    assert (user / "thesis.tex").read_text() == "years of work"
    one_line(cli_here(*base, "--out", str(tiny_model_dir / "vectors")), "inside the input folder")
    one_line(cli_here(*base, "--out", str(tmp_path)), "holds the input")  # the folder holding the prompt files
    out = tmp_path / "vec"
    assert cli_here(*base, "--out", str(out)).returncode == 0
    assert cli_here(*base, "--out", str(out)).returncode == 0  # the same command again replaces its own output
    one_line(cli_here(*base, "--layers", "1-2", "--out", str(out)), "other settings", "--force")
    assert cli_here(*base, "--layers", "1-2", "--out", str(out), "--force").returncode == 0
    assert json.loads((out / "card.json").read_text())["layers"] == [1, 2]
    (out / "notes.txt").write_text("mine")
    one_line(cli_here(*base, "--out", str(out), "--force"), "holds files inspect-em extract did not write")
    assert (out / "notes.txt").read_text() == "mine"


def test_read_only_out_fails_before_the_model_loads(tiny_model_dir: Path, tmp_path: Path):
    """A folder nothing can be created in (a locked folder; /proc, where even root cannot): one
    line before any model loads."""
    targets = [Path("/proc/inspect_em_vectors")]
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        targets.append(locked / "v")
    for target in targets:
        proc = cli_here("extract", "--model", str(tiny_model_dir), "--trait", str(_tiny_trait(tmp_path)),
                   "--out", str(target))
        one_line(proc, "not writable")
        assert "Loading weights" not in proc.stderr


def test_bad_prompt_files_fail_before_the_model_loads(tiny_model_dir: Path, tmp_path: Path):
    """A non-UTF-8 or malformed prompt file of a trait: one line, and no weights loaded first."""
    trait = _tiny_trait(tmp_path)
    (tmp_path / "neg.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    proc = cli_here("extract", "--model", str(tiny_model_dir), "--trait", str(trait), "--out", str(tmp_path / "v"))
    one_line(proc, "neg.jsonl", "not UTF-8")
    assert "Loading weights" not in proc.stderr
    (tmp_path / "neg.jsonl").write_text('{"text": "no prompt key"}\n')
    proc = cli_here("extract", "--model", str(tiny_model_dir), "--trait", str(trait), "--out", str(tmp_path / "v"))
    one_line(proc, "neg.jsonl:1", "expected {\"prompt\"")
    assert "Loading weights" not in proc.stderr
    assert not (tmp_path / "v").exists()


def test_data_out_replaces_only_its_own_files(tmp_path: Path):
    mine = tmp_path / "train.jsonl"
    mine.write_text('{"messages": []}\n')
    one_line(cli_here("data", "insecure", "--n", "5", "--out", str(mine), "--force"),
             "was not written by inspect-em data")
    assert mine.read_text() == '{"messages": []}\n'
    out = tmp_path / "insecure.jsonl"
    assert cli_here("data", "insecure", "--n", "5", "--out", str(out)).returncode == 0
    first = out.read_bytes()
    assert cli_here("data", "insecure", "--n", "5", "--out", str(out)).returncode == 0  # same command again
    assert out.read_bytes() == first
    one_line(cli_here("data", "insecure", "--n", "7", "--out", str(out)), "--force")
    assert cli_here("data", "insecure", "--n", "7", "--out", str(out), "--force").returncode == 0
    assert len(out.read_text().splitlines()) == 7
    out.write_text(out.read_text() + '{"edited": true}\n')  # edited by the user since: never replaced
    one_line(cli_here("data", "insecure", "--n", "7", "--out", str(out), "--force"), "was edited since")


def test_finetune_out_checks_run_before_the_model_loads(embedded_model_path: Path, tmp_path: Path):
    data = tmp_path / "d.jsonl"
    assert cli_here("data", "prose", "--n", "4", "--out", str(data)).returncode == 0
    user = tmp_path / "results"
    user.mkdir()
    (user / "paper.pdf").write_bytes(b"%PDF")
    for args, message in (([str(user), "--force"], "was not written by inspect-em finetune"),
                          ([str(tmp_path)], "holds the input")):
        proc = cli_here("finetune", "--model", str(embedded_model_path), "--data", str(data), "--out", *args)
        one_line(proc, message)
        assert "Loading weights" not in proc.stderr  # refused before the model loads
    assert (user / "paper.pdf").read_bytes() == b"%PDF"


def test_sigterm_during_finetune_leaves_no_temporary(tiny_model_dir: Path, tmp_path: Path):
    data = tmp_path / "d.jsonl"
    assert cli("data", "prose", "--n", "40", "--out", str(data)).returncode == 0
    out = tmp_path / "ft"
    proc = subprocess.Popen([sys.executable, "-m", "inspect_em.cli", "finetune", "--model", str(tiny_model_dir),
                             "--data", str(data), "--out", str(out), "--max-steps", "200", "--batch-size", "1",
                             "--grad-accum", "1", "--max-seq-length", "128"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".ft.tmp-*")):
        time.sleep(0.2)
    assert list(tmp_path.glob(".ft.tmp-*")), "the finetune never started writing"
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert "aborted" in proc.stderr.read()
    assert not list(tmp_path.glob(".ft*")) and not out.exists()


def test_stale_temporaries_of_dead_processes_are_swept(tmp_path: Path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{pid}-abc"  # ours: every temporary of ours holds TMP_MARKER
    (stale / "merged").mkdir(parents=True)
    (stale / "merged" / "model.safetensors").write_bytes(b"x" * 100)
    (stale / TMP_MARKER).write_text("{}")
    alive = tmp_path / f".out.tmp-{os.getpid()}-def"
    alive.mkdir()
    (alive / TMP_MARKER).write_text("{}")
    other = tmp_path / f".other.tmp-{pid}-ghi"
    other.mkdir()
    (other / TMP_MARKER).write_text("{}")
    user = tmp_path / ".out.tmp-notes"
    user.mkdir()
    with atomic_output(tmp_path / "out", command="test", config={}) as tmp:
        (tmp / "a.txt").write_text("a")
    assert not stale.exists() and alive.exists() and other.exists() and user.exists()
    assert json.loads((tmp_path / "out" / MARKER).read_text())["files"] == ["a.txt"]
    assert sweep_stale(tmp_path, "other") == [other]


def test_check_output_rules(tmp_path: Path):
    out = tmp_path / "o"
    assert check_output(out, command="x", config={"a": 1}) == out  # new
    out.mkdir()
    assert check_output(out, command="x", config={"a": 1}) == out  # empty folder
    with atomic_output(out, command="x", config={"a": 1}) as tmp:
        (tmp / "f").write_text("1")
    check_output(out, command="x", config={"a": 1})
    with pytest.raises(InspectEmError, match="pass --force"):
        check_output(out, command="x", config={"a": 2})
    check_output(out, command="x", config={"a": 2}, force=True)
    with pytest.raises(InspectEmError, match="was not written by inspect-em y"):
        check_output(out, command="y", config={"a": 1}, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InspectEmError, match="is not a folder"):
        check_output(tmp_path / "file", command="x", config={})

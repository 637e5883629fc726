"""The recipes: bin/common.sh's option parser and stage guards, then recipes/librispeech/run.sh and
recipes/timit/run.sh end to end on the synthesized corpora, with a few updates, from a folder whose
path has spaces. Every recipe runs as a real subprocess, the way a user runs it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from w2vtk.error_bars import BlockCounts, probability_better
from w2vtk.scoring import align, read_trn

REPO = Path(__file__).resolve().parent.parent
COMMON = REPO / "bin" / "common.sh"
LIBRISPEECH = REPO / "recipes" / "librispeech" / "run.sh"
TIMIT = REPO / "recipes" / "timit" / "run.sh"
DEMO = REPO / "bin" / "demo.sh"
W2VTK = REPO / ".venv" / "bin" / "w2vtk"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Few updates, a small beam and two tuning trials: the pipeline, not the accuracy, is under test.
FAST = ["--pretrain-updates", "2", "--finetune-updates", "2", "--tune-trials", "2", "--beam", "4", "--nj", "1"]
LIBRI_STAGE_DIRS = {1: "data/librispeech/manifests", 2: "data/librispeech/lm", 3: "exp/librispeech_tiny/pretrain",
                    4: "exp/librispeech_tiny/finetune", 5: "exp/librispeech_tiny/decode",
                    6: "exp/librispeech_tiny/plots"}


def _bash(script: Path, *args: str, cwd: Path, env: dict | None = None, ok: bool = True
          ) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(script), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if ok:
        assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _stage_lines(log: str) -> dict[int, str]:
    """{stage: its `Stage N: ...` log line} (the last one per stage)."""
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"Stage (\d): .*", log)}


def _commands(log: str) -> list[str]:
    """The commands a recipe ran (run() logs each as `$ cmd ...`)."""
    return re.findall(r"\] \$ (.*)", log)


# ---------------------------------------------------------------- bin/common.sh on its own

# A one-stage script on common.sh: the stage copies $input into out/ and records $setting.
TOY = """#!/usr/bin/env bash
# toy.sh: copies a setting into out/.
#   --count N   a number
set -euo pipefail
stage=0
stop_stage=9
force=false
count=3
ratio=0.5
setting=a
fail=false
options=(stage stop_stage force count ratio setting fail)
. "{common}"
parse_options "$@"
sig="setting=$setting"
if begin_stage 1 "copy" out "$sig" {resumable}; then
  [ -f out/partial ] && echo "found a partial output" >&2
  echo partial > out/partial
  [ "$fail" = false ] || die "crashing on purpose"
  echo "$setting $count $ratio" > out/result
  need_files out/result
  end_stage out
fi
sig2="upstream=$(stamp out)"
if begin_stage 2 "use" out2 "$sig2"; then
  cp out/result out2/copied
  end_stage out2
fi
"""


@pytest.fixture
def toy(tmp_path):
    def make(resumable: bool = False) -> Path:
        path = tmp_path / "toy dir" / ("resumable.sh" if resumable else "toy.sh")
        path.parent.mkdir(exist_ok=True)
        path.write_text(TOY.format(common=COMMON, resumable="resumable" if resumable else ""))
        return path

    return make


def test_options_are_parsed_and_checked(toy):
    script = toy()
    work = script.parent
    proc = _bash(script, "--count", "7", "--ratio=2.25", "--setting", "with space", cwd=work)
    assert (work / "out" / "result").read_text() == "with space 7 2.25\n"
    assert "toy.sh --count 7 --ratio=2.25 --setting with\\ space" in proc.stderr  # logs its command line
    for args, message in ((["--count", "x"], "--count takes a whole number, not 'x'"),
                          (["--ratio", "fast"], "--ratio takes a number"),
                          (["--force", "yes"], "--force takes true or false"),
                          (["--colour", "red"], "unknown option --colour"),
                          (["--count"], "--count needs a value"),
                          (["stray"], "unexpected argument 'stray'")):
        proc = _bash(script, *args, cwd=work, ok=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[toy dir/toy\.sh\] error: ", proc.stderr, re.M)


def test_help_shows_header_and_current_values(toy):
    script = toy()
    proc = _bash(script, "--count", "5", "--help", cwd=script.parent)
    assert proc.stdout.startswith("toy.sh: copies a setting into out/.\n  --count N   a number\n\nCurrent values:\n")
    assert "--count            5" in proc.stdout and "--setting          a" in proc.stdout
    assert not (script.parent / "out").exists()


def test_stage_done_skipped_changed_forced(toy):
    script = toy()
    work = script.parent
    _bash(script, cwd=work)
    done = (work / "out" / ".done").read_text()
    assert done.startswith("setting=a\nid=")
    assert (work / "out2" / "copied").read_text() == "a 3 0.5\n"

    proc = _bash(script, cwd=work)  # nothing changed: both stages skipped
    assert "Stage 1: copy: done already" in proc.stderr and "Stage 2: use: done already" in proc.stderr
    assert (work / "out" / ".done").read_text() == done

    proc = _bash(script, "--setting", "b", cwd=work)  # a changed setting redoes the stage ...
    assert "Stage 1: copy: its inputs or settings changed" in proc.stderr
    assert "was: setting=a" in proc.stderr and "now: setting=b" in proc.stderr
    # ... and the stage downstream of it, whose input changed.
    assert "Stage 2: use: its inputs or settings changed" in proc.stderr
    assert (work / "out2" / "copied").read_text() == "b 3 0.5\n"

    proc = _bash(script, "--setting", "b", "--force", "true", "--stop-stage", "1", cwd=work)
    assert "Stage 1: copy\n" in proc.stderr + "\n" and "done already" not in proc.stderr
    assert "Stage 2" not in proc.stderr  # not selected
    assert (work / "out" / ".done").read_text() != done


def test_a_config_is_identified_by_its_content(tmp_path):
    """Stage signatures name configs by path and content: editing a config redoes the stages it drives."""
    conf = tmp_path / "conf dir" / "a.yaml"
    conf.parent.mkdir()
    conf.write_text("optim:\n  lr: 5.0e-4\n")

    def file_id() -> str:
        return subprocess.run(["bash", "-c", f'. "{COMMON}"; file_id "$1"', "-", str(conf)], capture_output=True,
                              text=True, check=True).stdout

    first = file_id()
    assert first.startswith(f"{conf} ") and first == file_id()
    conf.write_text("optim:\n  lr: 2.0e-3\n")
    assert file_id() != first and file_id().startswith(f"{conf} ")


def test_crashed_stage_starts_clean(toy):
    script = toy()
    work = script.parent
    proc = _bash(script, "--fail", "true", cwd=work, ok=False)
    assert proc.returncode == 1 and "crashing on purpose" in proc.stderr
    assert (work / "out" / "partial").exists() and not (work / "out" / ".done").exists()
    assert not (work / "out2").exists()  # no later stage ran
    proc = _bash(script, cwd=work)
    assert "found a partial output" not in proc.stderr  # the partial output was cleared first
    assert (work / "out" / ".done").exists() and (work / "out2" / ".done").exists()


def test_crashed_resumable_stage_keeps_its_work(toy):
    script = toy(resumable=True)
    work = script.parent
    _bash(script, "--fail", "true", cwd=work, ok=False)
    proc = _bash(script, cwd=work)
    assert "resuming from what is in out" in proc.stderr and "found a partial output" in proc.stderr
    # With other settings the partial work is not reused.
    _bash(script, "--fail", "true", "--setting", "c", "--force", "true", cwd=work, ok=False)
    proc = _bash(script, "--setting", "d", cwd=work)
    assert "resuming" not in proc.stderr and "found a partial output" not in proc.stderr
    # Work started by hand (no markers) is resumed; a forced stage starts afresh.
    shutil.rmtree(work / "out")
    (work / "out").mkdir()
    (work / "out" / "partial").write_text("by hand")
    proc = _bash(script, "--setting", "d", cwd=work)
    assert "found a partial output" in proc.stderr
    proc = _bash(script, "--setting", "d", "--force", "true", cwd=work)
    assert "found a partial output" not in proc.stderr


def test_w2vtk_must_exist(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text(f'set -euo pipefail\noptions=()\n. "{COMMON}"\nparse_options "$@"\nw2vtk --version\n')
    proc = _bash(script, cwd=tmp_path, env={"W2VTK": str(tmp_path / "nowhere")}, ok=False)
    assert proc.returncode == 1 and "run 'bash bin/setup.sh'" in proc.stderr and "or set W2VTK" in proc.stderr


# ---------------------------------------------------------------- --help of the recipes

def _options_of(script: Path) -> list[str]:
    text = script.read_text()
    body = re.search(r"^options=\((.*?)\)", text, re.M | re.S).group(1)
    return ["--" + name.replace("_", "-") for name in body.split()]


@pytest.mark.parametrize("script", [LIBRISPEECH, TIMIT, DEMO], ids=["librispeech", "timit", "demo"])
def test_every_option_is_documented(script, tmp_path):
    proc = _bash(script, "--help", cwd=tmp_path)
    header, values = proc.stdout.split("Current values:")
    for option in _options_of(script):
        assert re.search(rf"^#?\s+{option} ", header, re.M), f"{option} is not documented in {script}'s header"
        assert option in values
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_bad_recipe_options(tmp_path):
    for args, message in ((["--conf", "huge"], "--conf huge: choose tiny, base or large"),
                          (["--labelled", "2h"], "--labelled 2h: choose"),
                          (["--init", "missing.pt"], "--init missing.pt: no such file"),
                          (["--pretrain-updates", "0"], "give a positive number of updates")):
        proc = _bash(LIBRISPEECH, *args, cwd=tmp_path, ok=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    proc = _bash(TIMIT, cwd=tmp_path, ok=False)
    assert proc.returncode == 1 and "LDC93S1" in proc.stderr and "--timit DIR" in proc.stderr


def test_download_stage_explains_what_to_pass(tmp_path):
    # An address that refuses connections stands for openslr.org being out of reach.
    proc = _bash(LIBRISPEECH, "--stop-stage", "0", "--mirror", "http://127.0.0.1:9/resources", cwd=tmp_path, ok=False)
    assert proc.returncode == 1
    assert "cannot be reached" in proc.stderr and "pass --corpus DIR" in proc.stderr
    assert not (tmp_path / "data" / "librispeech" / "download" / ".done").exists()


def test_stage_2_needs_an_lm(tmp_path):
    proc = _bash(LIBRISPEECH, "--corpus", str(tmp_path), "--stage", "2", cwd=tmp_path, ok=False)
    assert proc.returncode == 1 and "--lm FILE" in proc.stderr and "--lm-text FILE" in proc.stderr


# ---------------------------------------------------------------- LibriSpeech end to end

@pytest.fixture(scope="module")
def librispeech_run(synth_librispeech, tmp_path_factory):
    """The tiny recipe on the synthesized corpus, in a folder with spaces: (work dir, args, process)."""
    work = tmp_path_factory.mktemp("recipes") / "work dir"
    corpus = work / "my corpus"
    shutil.copytree(synth_librispeech, corpus)
    args = ["--conf", "tiny", "--corpus", "my corpus", "--lm-text", "my corpus/lm-text.txt", *FAST]
    proc = _bash(LIBRISPEECH, *args, cwd=work)
    return work, args, proc


def test_librispeech_stages_and_outputs(librispeech_run):
    work, _, proc = librispeech_run
    lines = _stage_lines(proc.stderr)
    assert "Stage 0: download: skipped, using --corpus my corpus" in lines[0]
    for n, folder in LIBRI_STAGE_DIRS.items():
        assert "done already" not in lines[n]
        assert (work / folder / ".done").is_file(), folder
        assert not (work / folder / ".running").exists()
    # The synthesized corpus is detected: both models are fine-tuned and decoded.
    assert "models: pretrained scratch" in proc.stderr
    manifests = work / "data" / "librispeech" / "manifests"
    train = str(work / "my corpus" / "LibriSpeech" / "train-clean-100")
    assert (manifests / "train-all.tsv").read_text().splitlines()[1].startswith(train + "/")
    assert (manifests / "dev-clean.tsv").read_text().splitlines()[0] == str(work / "my corpus" / "LibriSpeech" / "dev-clean")
    exp = work / "exp" / "librispeech_tiny"
    for model in ("pretrained", "scratch"):
        assert (exp / "finetune" / model / "checkpoints" / "best.pt").is_file()
        weights = json.loads((exp / "decode" / model / "lm_weights.json").read_text())
        assert weights["subset"] == "dev-clean" and weights["trials"] == 2
        for subset in ("dev-clean", "test-clean"):
            for decoding in ("greedy", "4gram"):
                assert (exp / "decode" / model / subset / decoding / "hyp.trn").is_file()


def test_librispeech_results(librispeech_run):
    work, _, proc = librispeech_run
    exp = work / "exp" / "librispeech_tiny"
    md = (exp / "RESULTS.md").read_text()
    assert "| subset | pretrained, greedy | pretrained, 4gram | scratch, greedy | scratch, 4gram |" in md
    data = json.loads((exp / "results.json").read_text())
    assert data["metric"] == "wer"
    for model in ("pretrained", "scratch"):
        for subset in ("dev-clean", "test-clean"):
            for decoding in ("greedy", "4gram"):
                wer = json.loads((exp / "decode" / model / subset / decoding / "wer.json").read_text())
                entry = data["results"][model][subset][decoding]
                assert {k: v for k, v in entry.items() if k != "ci95"} == wer
                assert entry["ci95"][0] <= wer["wer"] <= entry["ci95"][1]
    row = next(line for line in md.splitlines() if line.startswith("| test-clean |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    results = data["results"]
    assert cells == [f"{results[m]['test-clean'][d]['wer']:.2f} ({results[m]['test-clean'][d]['ci95'][0]:.2f}-"
                     f"{results[m]['test-clean'][d]['ci95'][1]:.2f})"
                     for m in ("pretrained", "scratch") for d in ("greedy", "4gram")]
    # greedy against 4-gram for each model, pretrained against scratch for each decoding, per subset
    pairs = {(subset, frozenset(columns)) for subset in ("dev-clean", "test-clean") for columns in
             [(f"{m}, greedy", f"{m}, 4gram") for m in ("pretrained", "scratch")]
             + [(f"pretrained, {d}", f"scratch, {d}") for d in ("greedy", "4gram")]}
    assert len(data["comparisons"]) == 8
    assert {(c["subset"], frozenset((c["better"], c["worse"]))) for c in data["comparisons"]} == pairs
    for c in data["comparisons"]:
        # the better one made fewer errors, and p_better is the paired bootstrap over speakers of the two
        # decodings' per-utterance errors, recounted here from their trn files
        blocks = []
        for column in (c["better"], c["worse"]):
            model, decoding = column.split(", ")
            decoded = exp / "decode" / model / c["subset"] / decoding
            refs, hyps = read_trn(decoded / "ref.trn"), read_trn(decoded / "hyp.trn")
            ids = sorted(refs)
            blocks.append(BlockCounts.from_utterances(ids, [align(refs[u], hyps[u]).counts.errors for u in ids],
                                                      [len(refs[u]) for u in ids]))
        assert blocks[0].errors.sum() <= blocks[1].errors.sum()
        assert c["p_better"] == pytest.approx(probability_better(*blocks), abs=1e-4)
    assert "better than" in md
    for png in ("plots/pretrain.png", "plots/finetune.png"):
        assert (exp / png).read_bytes()[:8] == PNG_MAGIC
        assert f"]({png})" in md
    assert md in proc.stderr + proc.stdout  # the table is printed at the end


def test_librispeech_rerun_skips_everything(librispeech_run):
    work, args, _ = librispeech_run
    before = {n: (work / d / ".done").read_text() for n, d in LIBRI_STAGE_DIRS.items()}
    checkpoint = work / "exp" / "librispeech_tiny" / "pretrain" / "checkpoints" / "last.pt"
    mtime = checkpoint.stat().st_mtime_ns
    proc = _bash(LIBRISPEECH, *args, cwd=work)
    lines = _stage_lines(proc.stderr)
    assert all("done already" in lines[n] for n in LIBRI_STAGE_DIRS), lines
    assert _commands(proc.stderr) == []  # no w2vtk command ran
    assert {n: (work / d / ".done").read_text() for n, d in LIBRI_STAGE_DIRS.items()} == before
    assert checkpoint.stat().st_mtime_ns == mtime


def test_librispeech_forced_stage_that_crashes_reruns_cleanly(librispeech_run, tmp_path):
    work, args, _ = librispeech_run
    exp = work / "exp" / "librispeech_tiny"
    plots = work / LIBRI_STAGE_DIRS[6]
    done = (plots / ".done").read_text()
    decode_done = (work / LIBRI_STAGE_DIRS[5] / ".done").read_text()
    results = (exp / "RESULTS.md").read_text()
    # A w2vtk that dies half-way through writing its first plot.
    crashing = tmp_path / "w2vtk"
    crashing.write_text('#!/usr/bin/env bash\nif [ "$1" = plot ]; then echo half > "${@: -3:1}"; kill -9 $$; fi\n'
                        f'exec "{W2VTK}" "$@"\n')
    crashing.chmod(0o755)
    proc = _bash(LIBRISPEECH, *args, "--stage", "6", "--force", "true", cwd=work, env={"W2VTK": str(crashing)},
                 ok=False)
    assert proc.returncode != 0
    assert "Stage 6: plots and RESULTS.md\n" in proc.stderr  # forced although it was done
    assert (plots / "pretrain.png").read_text() == "half\n"
    assert not (plots / ".done").exists() and (plots / ".running").exists()

    proc = _bash(LIBRISPEECH, *args, cwd=work)
    lines = _stage_lines(proc.stderr)
    assert all("done already" in lines[n] for n in range(1, 6))
    assert "done already" not in lines[6]
    assert [c.split()[1] for c in _commands(proc.stderr)] == ["plot", "plot", "results"]
    assert (plots / "pretrain.png").read_bytes()[:8] == PNG_MAGIC
    assert (plots / ".done").read_text() != done
    assert (work / LIBRI_STAGE_DIRS[5] / ".done").read_text() == decode_done
    assert (exp / "RESULTS.md").read_text() == results


def test_librispeech_stage_2_with_a_given_lm(librispeech_run):
    work, _, _ = librispeech_run
    built = work / "data" / "librispeech" / "lm"
    base = ["--corpus", "my corpus", "--stage", "2", "--stop-stage", "2"]
    # An ARPA model: converted to binary, its unigrams make the lexicon.
    _bash(LIBRISPEECH, *base, "--lm", str(built / "4gram.arpa"), "--data", "given arpa", cwd=work)
    lm_dir = work / "given arpa" / "lm"
    assert (lm_dir / "lm.bin").read_bytes()[:8] == b"mmap lm "
    assert (lm_dir / "lexicon.txt").read_text() == (built / "lexicon.txt").read_text()
    # A binary model has no word list to read: the recipe asks for one.
    proc = _bash(LIBRISPEECH, *base, "--lm", str(built / "lm.bin"), "--data", "given bin", cwd=work, ok=False)
    assert proc.returncode == 1 and "pass --lm-words FILE" in proc.stderr
    _bash(LIBRISPEECH, *base, "--lm", str(built / "lm.bin"), "--lm-words", "my corpus/lm-text.txt",
          "--data", "given bin", cwd=work)
    assert (work / "given bin" / "lm" / "lexicon.txt").read_text().splitlines()[0].endswith(" |")
    assert (work / "given bin" / "lm" / ".done").is_file()


def test_librispeech_stage_1_with_a_synthesized_10_minute_split(librispeech_run):
    """A synthesized librispeech_finetuning/ holds only 1h/0: stage 1 prepares train-10m and
    --labelled 10m can use it, while --labelled 1h says what is missing."""
    work, _, _ = librispeech_run
    from w2vtk.synth.librispeech import LIBRILIGHT_10M, _write_librilight_split

    _write_librilight_split(work / "my corpus" / "LibriSpeech" / "train-clean-100", work / "my corpus" / LIBRILIGHT_10M,
                            0.3)
    base = ["--corpus", "my corpus", "--librilight", "my corpus/librispeech_finetuning", "--data", "with 10m"]
    _bash(LIBRISPEECH, *base, "--labelled", "10m", "--stage", "1", "--stop-stage", "1", cwd=work)
    manifests = work / "with 10m" / "manifests"
    assert (manifests / "train-10m.tsv").is_file() and not (manifests / "train-1h.tsv").exists()
    split = (manifests / "train-10m.tsv").read_text().splitlines()
    assert split[0].endswith("librispeech_finetuning") and all(row.startswith("1h/0/clean/") for row in split[1:])
    proc = _bash(LIBRISPEECH, *base, "--labelled", "1h", "--conf", "tiny", "--stage", "4", "--stop-stage", "4",
                 "--init", "exp/librispeech_tiny/pretrain/checkpoints/best.pt", cwd=work, ok=False)
    assert proc.returncode == 1 and "train-1h.tsv is missing" in proc.stderr


# ---------------------------------------------------------------- TIMIT end to end

def test_timit_recipe(synth_timit, librispeech_run, tmp_path):
    lib_work, _, _ = librispeech_run
    init = lib_work / "exp" / "librispeech_tiny" / "pretrain" / "checkpoints" / "best.pt"
    work = tmp_path / "timit work"
    work.mkdir()
    args = ["--conf", "tiny", "--timit", str(synth_timit), "--init", str(init), *FAST]
    proc = _bash(TIMIT, *args, cwd=work)
    lines = _stage_lines(proc.stderr)
    assert "skipped, fine-tuning starts from --init" in lines[3]
    exp = work / "exp" / "timit_tiny"
    for folder in ("data/timit/manifests", "data/timit/lm", "exp/timit_tiny/finetune", "exp/timit_tiny/decode",
                   "exp/timit_tiny/plots"):
        assert (work / folder / ".done").is_file(), folder
    assert (work / "data" / "timit" / "manifests" / "dict.phn.txt").read_text().count("\n") == 39
    assert not (exp / "pretrain").exists()
    md = (exp / "RESULTS.md").read_text()
    assert "PER (%)" in md and "| subset | pretrained, greedy | pretrained, phone-lm |" in md
    data = json.loads((exp / "results.json").read_text())
    assert data["metric"] == "per" and set(data["results"]["pretrained"]) == {"dev", "test"}
    assert json.loads((exp / "decode" / "pretrained" / "lm_weights.json").read_text())["subset"] == "dev"

    proc = _bash(TIMIT, *args, cwd=work)
    assert _commands(proc.stderr) == []
    assert all("done already" in line for n, line in _stage_lines(proc.stderr).items() if n not in (0, 3))

"""Language models: real KenLM builds from small text, file checks, lexicons, and the `w2vtk lm` commands."""
from __future__ import annotations

import gzip
import random
import string
import subprocess
import sys
from pathlib import Path

import kenlm
import pytest
from click.testing import CliRunner

from w2vtk.cli import main
from w2vtk.lm import (LanguageModelError, arpa_unigrams, build_binary, check_lm_file, kenlm_program, lexicon_words,
                      load_kenlm, read_lexicon, train_lm, write_lexicon)

W2VTK = str(Path(sys.executable).parent / "w2vtk")

TEXT = """The cat sat on the mat.
The dog sat on the log!
A cat and a dog, on the mat.
It's the cat's hat.
"""


def _zipf_text(lines: int) -> str:
    """Random sentences over 300 made-up words with Zipf frequencies: enough variety of n-gram counts
    for Kneser-Ney discount estimation without --discount_fallback."""
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(300)]
    weights = [1 / (i + 1) for i in range(len(words))]
    return "".join(" ".join(rng.choices(words, weights=weights, k=rng.randint(3, 10))) + "\n" for _ in range(lines))


@pytest.fixture(scope="module")
def small_lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    (d / "text.txt").write_text(TEXT)
    train_lm(d / "text.txt", d / "tiny.arpa", order=3)
    return d


def test_kenlm_programs_are_found_and_missing_ones_explained(monkeypatch, tmp_path):
    assert Path(kenlm_program("lmplz")).name == "lmplz"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LanguageModelError, match="bin/setup.sh"):
        kenlm_program("lmplz")


def test_train_normalises_text_and_builds_a_real_kneser_ney_model(small_lm):
    arpa = small_lm / "tiny.arpa"
    info = check_lm_file(arpa)
    assert info.kind == "arpa" and info.order == 3
    words = arpa_unigrams(arpa)
    assert set(words) == {"THE", "CAT", "SAT", "ON", "MAT", "DOG", "LOG", "A", "AND", "IT'S", "CAT'S", "HAT"}
    model = load_kenlm(arpa)
    assert model.order == 3
    assert model.score("THE CAT SAT ON THE MAT") > model.score("MAT THE ON SAT CAT THE")
    # modified Kneser-Ney: with its backoff weights, P(next | context) sums to 1 over the vocabulary,
    # <unk> and </s> included, after a seen, an unseen and no context
    unigrams = sum(10 ** model.score(w, bos=False, eos=False) for w in words + ["<unk>", "</s>"])
    assert unigrams == pytest.approx(1.0, abs=1e-4)
    for context in ("THE", "THE CAT", "DOG HAT"):
        before = model.score(context, bos=False, eos=False)
        probs = sum(10 ** (model.score(f"{context} {w}", bos=False, eos=False) - before) for w in words + ["<unk>"])
        probs += 10 ** (model.score(context, bos=False, eos=True) - before)
        assert probs == pytest.approx(1.0, abs=1e-4), context


def test_small_text_retries_with_discount_fallback_or_fails_clearly(tmp_path, caplog):
    (tmp_path / "t.txt").write_text(TEXT)
    with pytest.raises(LanguageModelError, match="too small.*--discount-fallback"):
        train_lm(tmp_path / "t.txt", tmp_path / "a.arpa", order=3, discount_fallback=False)
    assert not (tmp_path / "a.arpa").exists()
    train_lm(tmp_path / "t.txt", tmp_path / "a.arpa", order=3)
    assert "retrying with lmplz --discount_fallback" in caplog.text


def test_enough_text_needs_no_fallback_and_prune_passes_through(tmp_path):
    (tmp_path / "t.txt").write_text(_zipf_text(1000))
    full = train_lm(tmp_path / "t.txt", tmp_path / "full.arpa", order=3, discount_fallback=False)
    pruned = train_lm(tmp_path / "t.txt", tmp_path / "pruned.arpa", order=3, prune=[0, 1, 1],
                      discount_fallback=False)
    full_counts, pruned_counts = check_lm_file(full).ngram_counts, check_lm_file(pruned).ngram_counts
    assert pruned_counts[0] == full_counts[0]
    assert pruned_counts[1] < full_counts[1] and pruned_counts[2] < full_counts[2]
    with pytest.raises(LanguageModelError, match="--prune"):
        train_lm(tmp_path / "t.txt", tmp_path / "x.arpa", order=3, prune=[1, 0])
    with pytest.raises(LanguageModelError, match="orders 2 to 6"):
        train_lm(tmp_path / "t.txt", tmp_path / "x.arpa", order=7)


def test_gzipped_and_binary_models_score_like_the_arpa(small_lm, tmp_path):
    gz = train_lm(small_lm / "text.txt", tmp_path / "tiny.arpa.gz", order=3)
    with gzip.open(gz, "rt") as f:
        assert f.readline().strip() == "\\data\\"
    assert check_lm_file(gz).kind == "arpa.gz" and arpa_unigrams(gz) == arpa_unigrams(small_lm / "tiny.arpa")
    binary = build_binary(small_lm / "tiny.arpa", tmp_path / "tiny.bin")
    assert check_lm_file(binary).kind == "binary"
    assert check_lm_file(build_binary(gz, tmp_path / "from_gz.bin")).kind == "binary"
    sentence = "THE DOG SAT ON THE MAT"
    reference = load_kenlm(small_lm / "tiny.arpa").score(sentence)
    for path in (gz, binary):
        assert load_kenlm(path).score(sentence) == pytest.approx(reference, abs=1e-4)
    with pytest.raises(LanguageModelError, match="binary file has no readable word list"):
        arpa_unigrams(binary)


def test_bad_model_files_give_one_line_errors(small_lm, tmp_path):
    data = (small_lm / "tiny.arpa").read_text()
    (tmp_path / "cut.arpa").write_text(data[: len(data) // 2])
    with pytest.raises(LanguageModelError) as err:
        load_kenlm(tmp_path / "cut.arpa")
    msg = str(err.value)
    assert "cut.arpa" in msg and "truncated" in msg and "\n" not in msg
    # a 1-gram section shorter than its header says is caught without loading the model
    lines = data.splitlines()
    cut = lines[: lines.index("\\1-grams:") + 4]
    (tmp_path / "cut1.arpa").write_text("\n".join(cut) + "\n")
    with pytest.raises(LanguageModelError, match=r"cut1\.arpa: the 1-gram section has 3 entries"):
        arpa_unigrams(tmp_path / "cut1.arpa")
    # higher orders than KenLM was built for: from the header, and KenLM's own error mapped
    header_end = data.index("\n\n")
    seven = data[:header_end] + "".join(f"\nngram {n}=1" for n in range(4, 8)) + data[header_end:]
    (tmp_path / "seven.arpa").write_text(seven)
    with pytest.raises(LanguageModelError, match=r"seven\.arpa: a 7-gram model.*--order 6"):
        load_kenlm(tmp_path / "seven.arpa")
    from w2vtk.lm import kenlm_load_error

    with pytest.raises(OSError) as raw:
        kenlm.Model(str(tmp_path / "seven.arpa"))
    assert "--order 6" in str(kenlm_load_error(tmp_path / "seven.arpa", raw.value))
    (tmp_path / "text.arpa").write_text("THE CAT\n")
    with pytest.raises(LanguageModelError, match=r"text\.arpa: first line is 'THE CAT'"):
        check_lm_file(tmp_path / "text.arpa")
    with pytest.raises(LanguageModelError, match="no such"):
        check_lm_file(tmp_path / "missing.arpa")


def test_text_that_cannot_be_normalised_names_file_and_line(tmp_path):
    (tmp_path / "t.txt").write_text("THE CAT\nTHE 3 CATS\n")
    with pytest.raises(LanguageModelError, match=r"t\.txt:2: .*'3'.*--no-normalize"):
        train_lm(tmp_path / "t.txt", tmp_path / "x.arpa", order=2)
    assert not (tmp_path / "x.arpa").exists()


def test_lexicons_from_word_lists_text_and_arpa(small_lm, tmp_path):
    (tmp_path / "vocab.txt").write_text("HELLO\nWORLD\nIT'S\nHELLO\n")
    assert write_lexicon(tmp_path / "vocab.txt", tmp_path / "lex.txt") == 3
    assert (tmp_path / "lex.txt").read_text() == "HELLO\tH E L L O |\nWORLD\tW O R L D |\nIT'S\tI T ' S |\n"
    assert read_lexicon(tmp_path / "lex.txt")["WORLD"] == [["W", "O", "R", "L", "D", "|"]]
    assert lexicon_words(small_lm / "text.txt")[:4] == ["THE", "CAT", "SAT", "ON"]
    assert lexicon_words(small_lm / "tiny.arpa") == arpa_unigrams(small_lm / "tiny.arpa")
    (tmp_path / "bad.txt").write_text("HELLO\tH E L L O |\nWORLD\n")
    with pytest.raises(LanguageModelError, match=r"bad\.txt:2"):
        read_lexicon(tmp_path / "bad.txt")
    (tmp_path / "noword.txt").write_text("HELLO\tH E L L O |\n\tW O R L D |\n")
    with pytest.raises(LanguageModelError, match=r"noword\.txt:2: no word before the spelling"):
        read_lexicon(tmp_path / "noword.txt")


def test_lm_commands_in_process_and_as_a_subprocess(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    runner = CliRunner()
    res = runner.invoke(main, ["lm", "train", "--order", "3", str(tmp_path / "t.txt"), str(tmp_path / "o.arpa"),
                               "--binary", str(tmp_path / "o.bin")])
    assert res.exit_code == 0, res.output
    assert "3-gram" in res.output and check_lm_file(tmp_path / "o.bin").kind == "binary"
    res = runner.invoke(main, ["lm", "lexicon", str(tmp_path / "o.arpa"), str(tmp_path / "lex.txt")])
    assert res.exit_code == 0 and "12 words" in res.output
    assert "CAT'S\tC A T ' S |" in (tmp_path / "lex.txt").read_text()
    res = runner.invoke(main, ["lm", "train", "--prune", "x", str(tmp_path / "t.txt"), str(tmp_path / "p.arpa")])
    assert res.exit_code == 2 and "--prune" in res.output

    proc = subprocess.run([W2VTK, "lm", "binary", str(tmp_path / "o.arpa"), str(tmp_path / "o2.bin"),
                           "--type", "trie"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert check_lm_file(tmp_path / "o2.bin").kind == "binary"
    (tmp_path / "cut.arpa").write_text("\\data\\\nngram 1=5\n")
    proc = subprocess.run([W2VTK, "lm", "binary", str(tmp_path / "cut.arpa"), str(tmp_path / "x.bin")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("error: build_binary failed on") and "End of file" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.bin").exists()

"""Scoring: our counts must equal NIST sclite's, utterance by utterance."""
from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2vtk.errors import W2vtkError
from w2vtk.scoring import (DEL_COST, INS_COST, SUB_COST, ErrorCounts, align, characters,
                           errors_report, read_trn, score_corpus, summary_dict, write_trn)


def _sclite_cell_by_cell(ref, hyp):
    """sclite's recurrence written out cell by cell (net_dp.c's order of comparisons), for cross-checking
    the vectorised version."""
    n, m = len(ref), len(hyp)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    back = [[None] * (m + 1) for _ in range(n + 1)]
    for b in range(1, m + 1):
        cost[0][b], back[0][b] = cost[0][b - 1] + INS_COST, "I"
    for a in range(1, n + 1):
        cost[a][0], back[a][0] = cost[a - 1][0] + DEL_COST, "D"
        for b in range(1, m + 1):
            s = cost[a - 1][b - 1] + (0 if ref[a - 1] == hyp[b - 1] else SUB_COST)
            d = cost[a - 1][b] + DEL_COST
            i = cost[a][b - 1] + INS_COST
            if s <= d and s <= i:
                cost[a][b], back[a][b] = s, "S"
            elif d < i:
                cost[a][b], back[a][b] = d, "D"
            else:
                cost[a][b], back[a][b] = i, "I"
    pairs, a, b = [], n, m
    while a or b:
        op = back[a][b]
        if op == "S":
            pairs.append((ref[a - 1], hyp[b - 1])); a -= 1; b -= 1
        elif op == "D":
            pairs.append((ref[a - 1], None)); a -= 1
        else:
            pairs.append((None, hyp[b - 1])); b -= 1
    return tuple(reversed(pairs))


def _levenshtein(ref, hyp):
    prev = list(range(len(hyp) + 1))
    for a in range(1, len(ref) + 1):
        cur = [a] + [0] * len(hyp)
        for b in range(1, len(hyp) + 1):
            cur[b] = min(prev[b - 1] + (ref[a - 1] != hyp[b - 1]), prev[b] + 1, cur[b - 1] + 1)
        prev = cur
    return prev[-1]


tokens = st.lists(st.sampled_from("abcde"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(tokens, tokens)
def test_vectorised_alignment_equals_cell_by_cell_recurrence(ref, hyp):
    al = align(ref, hyp)
    assert al.pairs == _sclite_cell_by_cell(ref, hyp)
    assert [r for r, _ in al.pairs if r is not None] == ref
    assert [h for _, h in al.pairs if h is not None] == hyp
    c = al.counts
    assert c.ref_tokens == len(ref) and c.correct + c.sub + c.ins == len(hyp)
    # the weighted alignment never has fewer edits than the unit-cost minimum
    assert c.errors >= _levenshtein(ref, hyp)


def test_known_alignments():
    c = align("a b c".split(), "a c c d".split()).counts
    assert (c.sub, c.dels, c.ins) == (1, 0, 1)
    c = align([], "x y".split()).counts
    assert (c.ref_tokens, c.errors, c.ins) == (0, 2, 2) and c.rate() is None
    c = align("x y".split(), []).counts
    assert (c.dels, c.rate()) == (2, 100.0)
    assert align([], []).counts.rate() == 0.0
    # CER splits words into characters, without spaces (sclite -c): a b c d vs a b d c
    c = align(characters(["ab", "cd"]), characters(["abd", "c"])).counts
    assert (c.ref_tokens, c.sub, c.dels, c.ins) == (4, 0, 1, 1)


def test_error_counts_add_and_report():
    total, als = score_corpus([["a", "b"], ["c"]], [["a", "x"], []])
    assert total == ErrorCounts(ref_tokens=3, sub=1, dels=1, ins=0, sentences=2, sentence_errors=2)
    d = summary_dict(total, "wer")
    assert d["wer"] == pytest.approx(200 / 3, abs=1e-3) and (d["sub"], d["del"], d["ins"]) == (1, 1, 0)
    report = errors_report(["u1", "u2"], als, "wer")
    assert "b -> x" in report and "id: (u2)" in report and "Eval:" in report
    with pytest.raises(ValueError):
        score_corpus([["a"]], [])


def test_trn_roundtrip_and_errors(tmp_path):
    write_trn(tmp_path / "h.trn", ["s1-a", "s1-b"], [["HELLO", "WORLD"], []])
    assert (tmp_path / "h.trn").read_text() == "HELLO WORLD (s1-a)\n(s1-b)\n"
    assert read_trn(tmp_path / "h.trn") == {"s1-a": ["HELLO", "WORLD"], "s1-b": []}
    with pytest.raises(W2vtkError, match="trn file"):
        write_trn(tmp_path / "x.trn", ["bad id"], [["A"]])
    (tmp_path / "bad.trn").write_text("HELLO WORLD\n")
    with pytest.raises(W2vtkError, match=r"bad\.trn:1"):
        read_trn(tmp_path / "bad.trn")


def _random_corpus(rng: random.Random, n: int, vocab: list[str]):
    refs, hyps = [], []
    for i in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.choice([0, 0, 1, 2, 5, 9, 14, 20]))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 6)):  # random edits, some utterances untouched
            op = rng.random()
            if op < 0.4 and hyp:
                hyp[rng.randrange(len(hyp))] = rng.choice(vocab)
            elif op < 0.7 and hyp:
                del hyp[rng.randrange(len(hyp))]
            else:
                hyp.insert(rng.randint(0, len(hyp)), rng.choice(vocab))
        if i % 17 == 0:
            hyp = []
        if i % 23 == 0:
            hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]  # unrelated
        refs.append(ref)
        hyps.append(hyp)
    return refs, hyps


def _run_sclite(tmp_path, ids, refs, hyps, extra=()):
    write_trn(tmp_path / "ref.trn", ids, refs)
    write_trn(tmp_path / "hyp.trn", ids, hyps)
    sctk = shutil.which("sctk")
    assert sctk, "sctk (NIST SCTK, `sctk sclite`) is missing: run bin/setup.sh"
    out = subprocess.run([sctk, "sclite", "-r", str(tmp_path / "ref.trn"), "trn", "-h", str(tmp_path / "hyp.trn"),
                          "trn", "-i", "spu_id", "-s", *extra, "-o", "pralign", "rsum", "stdout"],
                         capture_output=True, text=True, check=True).stdout
    per_utt = {m.group(1): tuple(int(x) for x in m.group(2).split())
               for m in re.finditer(r"id: \(([^)]*)\)\nScores: \(#C #S #D #I\) ([\d ]+)\n", out)}
    total = re.search(r"\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\|", out)
    assert total, out[-2000:]
    return per_utt, tuple(int(x) for x in total.groups())


@pytest.mark.parametrize("unit", ["word", "char"])
def test_counts_identical_to_sclite(tmp_path, unit):
    rng = random.Random(1234 if unit == "word" else 99)
    vocab = ["the", "a", "cat", "cats", "sat", "on", "mat", "hat", "it's", "x"]
    refs, hyps = _random_corpus(rng, 400, vocab)
    ids = [f"spk{i % 7}-utt{i:04d}" for i in range(len(refs))]
    per_utt, (snt, wrd, corr, sub, dele, ins, err, serr) = _run_sclite(
        tmp_path, ids, refs, hyps, extra=("-c",) if unit == "char" else ())
    if unit == "char":
        refs, hyps = [characters(r) for r in refs], [characters(h) for h in hyps]
    total, als = score_corpus(refs, hyps)
    assert len(per_utt) == len(ids)
    for utt, al in zip(ids, als):
        c = al.counts
        assert (c.correct, c.sub, c.dels, c.ins) == per_utt[utt], utt
    assert (total.sentences, total.ref_tokens, total.correct, total.sub, total.dels, total.ins, total.errors,
            total.sentence_errors) == (snt, wrd, corr, sub, dele, ins, err, serr)
    # the random corpus must exercise the cases that matter
    assert any(not r for r in refs) and any(not h for h in hyps) and total.sub and total.dels and total.ins

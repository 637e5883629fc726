"""CTC decoders on synthetic log-probabilities made from known transcripts, with real KenLM models."""
from __future__ import annotations

import numpy as np
import pytest

from w2vtk.decoding import DecoderOptions, DecoderPool, DecodingError, decode_batch, make_decoder
from w2vtk.decoding.greedy import greedy_ids
from w2vtk.lm import LanguageModelError, train_lm, write_lexicon
from w2vtk.text import LETTERS, SPECIAL_SYMBOLS, Vocabulary, transcript_to_letters

LTR = Vocabulary(SPECIAL_SYMBOLS + ["|"] + LETTERS, "ltr")

# The LM's text: CAT follows THE far more often than HAT does; KAT and NAT never occur.
LM_TEXT = (["THE CAT SAT ON THE MAT"] * 6 + ["THE CAT IS ON THE MAT"] * 3 + ["A HAT IS ON THE DOG"] * 2
           + ["THE DOG SAT ON A LOG", "A DOG AND A CAT", "THE HAT", "ON THE LOG THE DOG SAT"])


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    (d / "text.txt").write_text("\n".join(LM_TEXT) + "\n")
    arpa = train_lm(d / "text.txt", d / "3gram.arpa", order=3, binary=d / "3gram.bin")
    train_lm(d / "text.txt", d / "3gram.arpa.gz", order=3)
    write_lexicon(arpa, d / "lexicon.txt")
    return d


def emissions(text: str, rng: np.random.Generator, confusions: dict[int, tuple[str, float]] | None = None,
              vocab: Vocabulary = LTR, frames: int = 2, noise: float = 1.0) -> np.ndarray:
    """(frame, vocab) log-probabilities whose best path spells `text`: each symbol for `frames` frames,
    a blank after it, Gaussian noise on every logit. confusions[i] = (symbol, margin) makes another
    symbol beat the i-th one by `margin` (in logits) on its frames, the true one a close second."""
    symbols = transcript_to_letters(text).split() if vocab.kind == "ltr" else text.split()
    rows = []
    for i, sym in enumerate(symbols):
        for _ in range(frames):
            row = rng.normal(0.0, noise, len(vocab))
            row[vocab.index(sym)] += 10.0
            if confusions and i in confusions:
                other, margin = confusions[i]
                row[vocab.index(other)] = row[vocab.index(sym)] + margin
            rows.append(row)
        row = rng.normal(0.0, noise, len(vocab))
        row[0] += 10.0
        rows.append(row)
    logits = np.array(rows, dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


def letter_index(text: str, word: int, letter: int) -> int:
    """Position, in the letter sequence with `|`s, of the given letter of the given word."""
    words = text.split()
    return sum(len(w) + 1 for w in words[:word]) + letter


SENTENCE = "THE CAT SAT ON THE MAT"


def test_greedy_collapses_repeats_and_drops_blanks():
    lp = np.full((7, len(LTR)), -10.0, dtype=np.float32)
    for t, sym in enumerate(["T", "T", "<s>", "O", "<s>", "O", "|"]):
        lp[t, LTR.index(sym)] = 0.0
    assert greedy_ids(lp) == [LTR.index(s) for s in ["T", "O", "O", "|"]]
    assert make_decoder(LTR, DecoderOptions()).decode(lp) == ["TOO"]
    assert greedy_ids(np.zeros((0, len(LTR)), np.float32)) == []


def test_greedy_spells_clean_emissions_and_keeps_acoustic_errors():
    rng = np.random.default_rng(0)
    clean = emissions(SENTENCE, rng)
    assert decode_batch([clean], LTR, DecoderOptions()) == [SENTENCE.split()]
    noisy = emissions(SENTENCE, rng, {letter_index(SENTENCE, 1, 0): ("K", 1.0),
                                      letter_index(SENTENCE, 5, 0): ("N", 1.0)})
    assert decode_batch([noisy], LTR, DecoderOptions()) == ["THE KAT SAT ON THE NAT".split()]


@pytest.mark.parametrize("decoder,lm_name,lexicon", [
    ("flashlight", "3gram.arpa", None),          # lexicon from the ARPA's unigrams
    ("flashlight", "3gram.arpa.gz", "lexicon.txt"),
    ("flashlight", "3gram.bin", "lexicon.txt"),
    ("pyctcdecode", "3gram.arpa", None),
    ("pyctcdecode", "3gram.bin", None),          # binary: no unigram list, whole words only
])
def test_lm_decoders_fix_acoustic_errors(lm_files, decoder, lm_name, lexicon):
    rng = np.random.default_rng(1)
    noisy = emissions(SENTENCE, rng, {letter_index(SENTENCE, 1, 0): ("K", 1.0),
                                      letter_index(SENTENCE, 5, 0): ("N", 1.0)})
    options = DecoderOptions(decoder=decoder, lm=str(lm_files / lm_name),
                             lexicon=str(lm_files / lexicon) if lexicon else None, lm_weight=2.0, word_score=0.0)
    assert decode_batch([noisy], LTR, DecoderOptions()) != [SENTENCE.split()]
    assert decode_batch([noisy], LTR, options) == [SENTENCE.split()]


@pytest.mark.parametrize("decoder", ["flashlight", "pyctcdecode"])
def test_lm_weight_trades_acoustics_against_the_lm(lm_files, decoder):
    # the acoustics say HAT by a small margin; the LM prefers CAT after THE
    rng = np.random.default_rng(2)
    lp = emissions(SENTENCE, rng, {letter_index(SENTENCE, 1, 0): ("H", 1.5)})
    options = DecoderOptions(decoder=decoder, lm=str(lm_files / "3gram.arpa"), word_score=0.0)
    with DecoderPool(LTR, jobs=1) as pool:
        without_lm = pool.decode([lp], options.with_weights(0.0, 0.0))
        with_lm = pool.decode([lp], options.with_weights(3.0, 0.0))
    assert without_lm == ["THE HAT SAT ON THE MAT".split()]
    assert with_lm == [SENTENCE.split()]


def test_flashlight_without_lm_keeps_to_the_lexicon(lm_files):
    rng = np.random.default_rng(3)
    noisy = emissions(SENTENCE, rng, {letter_index(SENTENCE, 1, 0): ("K", 1.0)})
    options = DecoderOptions(decoder="flashlight", lexicon=str(lm_files / "lexicon.txt"), word_score=0.0)
    words = decode_batch([noisy], LTR, options)[0]
    assert "KAT" not in words and words[0] == "THE" and words[2:] == SENTENCE.split()[2:]


def test_parallel_decoding_matches_in_process(lm_files):
    rng = np.random.default_rng(4)
    sentences = [LM_TEXT[i % len(LM_TEXT)] for i in range(24)]
    batch = [emissions(s, rng, {1: ("K", 0.5)}, noise=1.5) for s in sentences]
    options = DecoderOptions(decoder="flashlight", lm=str(lm_files / "3gram.bin"),
                             lexicon=str(lm_files / "lexicon.txt"))
    serial = decode_batch(batch, LTR, options, jobs=1)
    with DecoderPool(LTR, jobs=2) as pool:
        assert pool.decode(batch, options) == serial
        # the workers keep their LM; other weights need no reload
        assert pool.decode(batch[:3], options.with_weights(0.5, 1.0)) == \
            decode_batch(batch[:3], LTR, options.with_weights(0.5, 1.0))
    assert sum(s.split() == w for s, w in zip(sentences, serial)) >= 20


def test_phone_labels_with_a_phone_lm(tmp_path):
    phones = ["sil", "dh", "ah", "k", "ae", "t", "s", "m"]
    vocab = Vocabulary(SPECIAL_SYMBOLS + phones, "phn")
    text = ["sil dh ah k ae t sil"] * 5 + ["sil dh ah m ae t sil"] * 2 + ["sil s ae t sil"]
    (tmp_path / "phones.txt").write_text("\n".join(text) + "\n")
    lm = train_lm(tmp_path / "phones.txt", tmp_path / "phones.arpa", order=3, normalize=False)
    rng = np.random.default_rng(5)
    lp = emissions("sil dh ah k ae t sil", rng, {3: ("s", 0.8)}, vocab=vocab)
    assert decode_batch([lp], vocab, DecoderOptions()) == [["sil", "dh", "ah", "s", "ae", "t", "sil"]]
    options = DecoderOptions(decoder="pyctcdecode", lm=str(lm), lm_weight=2.0, word_score=0.0)
    assert decode_batch([lp], vocab, options) == [text[0].split()]


def test_bad_input_fails_before_decoding(lm_files, tmp_path):
    lp = emissions(SENTENCE, np.random.default_rng(6))
    with pytest.raises(DecodingError, match=r"shape \(\d+, 5\)"):
        decode_batch([lp[:, :5]], LTR, DecoderOptions())
    with pytest.raises(DecodingError, match="needs a lexicon"):
        decode_batch([lp], LTR, DecoderOptions(decoder="flashlight"))
    with pytest.raises(DecodingError, match="binary"):
        decode_batch([lp], LTR, DecoderOptions(decoder="flashlight", lm=str(lm_files / "3gram.bin")))
    with pytest.raises(DecodingError, match="unknown decoder"):
        decode_batch([lp], LTR, DecoderOptions(decoder="viterbi"))
    with pytest.raises(LanguageModelError, match="no such"):
        decode_batch([lp], LTR, DecoderOptions(decoder="pyctcdecode", lm=str(tmp_path / "missing.arpa")))


@pytest.mark.parametrize("jobs", [1, 2])
def test_truncated_lm_is_reported_from_worker_processes(lm_files, tmp_path, jobs):
    data = (lm_files / "3gram.arpa").read_bytes()
    (tmp_path / "cut.arpa").write_bytes(data[: len(data) * 2 // 3])
    lp = emissions(SENTENCE, np.random.default_rng(7))
    options = DecoderOptions(decoder="flashlight", lm=str(tmp_path / "cut.arpa"),
                             lexicon=str(lm_files / "lexicon.txt"))
    with pytest.raises(LanguageModelError, match=r"cut\.arpa: .*truncated"):
        decode_batch([lp, lp], LTR, options, jobs=jobs)

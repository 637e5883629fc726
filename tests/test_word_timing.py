"""Word times and confidences from CTC frames, for the greedy and both beam decoders, on synthetic
log-probabilities whose frames are known exactly (see test_decode.emissions: each symbol holds 2
frames and a blank follows it)."""
from __future__ import annotations

import numpy as np
import pytest

from test_decode import LTR, SENTENCE, emissions, letter_index, lm_files  # noqa: F401 (fixture)
from w2vtk.calibration import correct_words, expected_calibration_error, roc_auc
from w2vtk.decoding import DecoderOptions, make_decoder
from w2vtk.model import base_config, tiny_config
from w2vtk.scoring import align
from w2vtk.text import SPECIAL_SYMBOLS, Vocabulary
from w2vtk.word_timing import FrameClock, path_spans, spell, timed_words, token_runs

CLOCK = FrameClock.of(base_config())


def expected_frames(text: str) -> list[tuple[int, int]]:
    """[first, end) frames of each word in `emissions(text)`: 3 frames per letter (2 + a blank), 3 per `|`."""
    spans, pos = [], 0
    for word in text.split():
        spans.append((pos, pos + 3 * len(word) - 1))  # the word's last blank is not the word's
        pos += 3 * (len(word) + 1)
    return spans


def test_frame_clock_comes_from_the_cnn():
    assert (CLOCK.stride, CLOCK.receptive_field) == (320, 400)
    assert FrameClock.of(tiny_config()) == CLOCK  # same strides and kernels, fewer channels
    assert CLOCK.time(0) == pytest.approx(40 / 16000)  # the centre of frame 0's 400 samples minus 10 ms
    assert CLOCK.time(50) - CLOCK.time(0) == pytest.approx(1.0)
    assert CLOCK.frame(CLOCK.time(37) + 0.001) == 37
    wide = FrameClock.of(base_config(conv_layers=[[8, 10, 5], [8, 3, 2], [8, 3, 3]]))
    assert (wide.stride, wide.receptive_field) == (30, 10 + 5 * 2 + 10 * 2)


def test_path_spans_split_words_phones_and_pieces():
    path = np.array([LTR.index(s) for s in ["T", "T", "<s>", "O", "<s>", "O", "|", "|", "<s>", "A", "<pad>", "|"]])
    assert token_runs(path)[:2] == [(LTR.index("T"), 0, 2), (LTR.index("O"), 3, 4)]
    spans = path_spans(path, LTR)
    assert [(s.word, s.start, s.end) for s in spans] == [("TOO", 0, 6), ("A", 9, 10)]
    phn = Vocabulary(SPECIAL_SYMBOLS + ["aa", "b"], "phn")
    assert [(s.word, s.start, s.end) for s in path_spans(np.array([4, 4, 0, 5, 4]), phn)] == [
        ("aa", 0, 2), ("b", 3, 4), ("aa", 4, 5)]
    sp = Vocabulary(SPECIAL_SYMBOLS + ["\u2581TH", "E", "\u2581CAT"], "sp")
    assert [(s.word, s.start, s.end) for s in path_spans(np.array([4, 0, 5, 6, 6]), sp)] == [
        ("THE", 0, 3), ("CAT", 3, 5)]
    assert spell("THE", sp) == (4, 5) and spell("DOG", sp) is None and spell("CAT", LTR) == (
        LTR.index("C"), LTR.index("A"), LTR.index("T"))


@pytest.mark.parametrize("decoder", ["greedy", "pyctcdecode", "flashlight"])
def test_every_decoder_times_words_on_their_frames(lm_files, decoder):
    lp = emissions(SENTENCE, np.random.default_rng(3))
    lm = None if decoder == "greedy" else str(lm_files / "3gram.arpa")
    hyp = make_decoder(LTR, DecoderOptions(decoder=decoder, lm=lm)).decode_nbest(lp, 1)[0]
    assert hyp.words == SENTENCE.split()
    words = timed_words(hyp.spans, lp, CLOCK)
    assert [w.word for w in words] == SENTENCE.split()
    for w, (first, end) in zip(words, expected_frames(SENTENCE)):
        assert w.start == pytest.approx(CLOCK.time(first), abs=1e-3)
        assert w.end == pytest.approx(CLOCK.time(end), abs=2e-3)
        assert 0.9 < w.confidence <= 1.0  # clean emissions: every letter nearly certain


@pytest.mark.parametrize("decoder", ["greedy", "pyctcdecode", "flashlight"])
def test_confidence_is_lowest_on_the_word_with_an_unsure_letter(lm_files, decoder):
    # the C of CAT: K beats it by a small margin, so the word (CAT with a lexicon, KAT without) is unsure
    lp = emissions(SENTENCE, np.random.default_rng(5), {letter_index(SENTENCE, 1, 0): ("K", 0.3)})
    lm = None if decoder == "greedy" else str(lm_files / "3gram.arpa")
    hyp = make_decoder(LTR, DecoderOptions(decoder=decoder, lm=lm)).decode_nbest(lp, 1)[0]
    words = timed_words(hyp.spans, lp, CLOCK)
    conf = [w.confidence for w in words]
    assert len(words) == 6 and int(np.argmin(conf)) == 1 and conf[1] < 0.6, words
    assert min(conf[:1] + conf[2:]) > 0.9


def test_nbest_first_is_the_one_best_with_consistent_scores(lm_files):
    lp = emissions(SENTENCE, np.random.default_rng(8), {letter_index(SENTENCE, 1, 0): ("K", 0.5),
                                                        letter_index(SENTENCE, 5, 0): ("H", 0.5)})
    for decoder in ("pyctcdecode", "flashlight"):
        options = DecoderOptions(decoder=decoder, lm=str(lm_files / "3gram.arpa"), beam=16, word_score=0.5)
        dec = make_decoder(LTR, options)
        hyps = dec.decode_nbest(lp, 5)
        assert 1 < len(hyps) <= 5 and hyps[0].words == dec.decode(lp)
        assert len({tuple(h.words) for h in hyps}) == len(hyps)  # distinct word sequences
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert h.am < 0 and h.lm < 0 and h.record()["words"] == len(h.words)
            if decoder == "flashlight":
                assert h.score == pytest.approx(h.am + options.lm_weight * h.lm + options.word_score * len(h.words),
                                                abs=1e-3)


def test_auc_and_calibration_error():
    assert correct_words(align("A B C".split(), "A X C D".split())) == [True, False, True, False]
    rng = np.random.default_rng(0)
    conf = rng.random(200)
    right = rng.random(200) < conf  # calibrated by construction
    pairs = [(c1 > c2) + 0.5 * (c1 == c2) for c1, r1 in zip(conf, right) if r1 for c2, r2 in zip(conf, right) if not r2]
    assert roc_auc(conf, right) == pytest.approx(np.mean(pairs))
    assert roc_auc(conf, right) > 0.7 and roc_auc(1 - conf, right) < 0.3
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5 and roc_auc([0.1], [True]) is None
    assert expected_calibration_error(conf, right) < 0.15
    assert expected_calibration_error([0.95] * 10, [False] * 10) == pytest.approx(0.95)

"""CTC decoders on synthetic log-probabilities made from known transcripts, with real KenLM models."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from w2vtk.cli import main

from w2vtk.decoding import DecoderOptions, DecoderPool, DecodingError, decode_batch, make_decoder
from w2vtk.decoding.greedy import greedy_ids
from w2vtk.lm import LanguageModelError, train_lm, write_lexicon
from w2vtk.scoring import align, read_trn
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
    train_lm(d / "text.txt", d / "letters.arpa", order=6, letters=True)
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


# ------------------------------------------------------------------ end to end with a checkpoint and real audio

W2VTK = str(Path(sys.executable).parent / "w2vtk")


def _small_cfg(vocab_size: int):
    from w2vtk.model import tiny_config

    return tiny_config(conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, encoder_embed_dim=32,
                       encoder_layers=2, encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=8,
                       conv_pos_groups=4, final_dim=16, latent_vars=0, vocab_size=vocab_size)


def write_finetuned(path: Path, vocab: Vocabulary, blank_only: bool = False) -> Path:
    """A fine-tuned checkpoint as `w2vtk finetune` writes it. Random weights; `blank_only` makes the CTC
    head emit the blank on every frame (an empty transcript for every utterance)."""
    from w2vtk.checkpoint import save_checkpoint
    from w2vtk.model import build_model

    torch.manual_seed(0)
    cfg = _small_cfg(len(vocab))
    model = build_model(cfg)
    if blank_only:
        with torch.no_grad():
            model.ctc_head.weight.zero_()
            model.ctc_head.bias.zero_()
            model.ctc_head.bias[0] = 5.0
    save_checkpoint(path, {"kind": "finetune", "model_config": cfg.to_dict(), "model": model.state_dict(),
                           "vocab": vocab.to_list(), "labels": vocab.kind, "train_config": None})
    return path


@pytest.fixture(scope="module")
def librispeech_setup(prepared_librispeech, synth_librispeech, tmp_path_factory):
    d = tmp_path_factory.mktemp("decode_ls")
    vocab = Vocabulary.from_dict_file(prepared_librispeech / "dict.ltr.txt", "ltr")
    arpa = train_lm(synth_librispeech / "lm-text.txt", d / "lm.arpa", order=3, binary=d / "lm.bin")
    write_lexicon(arpa, d / "lexicon.txt")
    return {"data": prepared_librispeech, "vocab": vocab, "random": write_finetuned(d / "random.pt", vocab),
            "blank": write_finetuned(d / "blank.pt", vocab, blank_only=True), "arpa": arpa, "bin": d / "lm.bin",
            "lexicon": d / "lexicon.txt"}


def test_logprobs_do_not_depend_on_batching(librispeech_setup):
    from w2vtk.decode import compute_logprobs, load_acoustic_model
    from w2vtk.manifest import Manifest, read_manifest

    am = load_acoustic_model(librispeech_setup["random"], device="cpu")
    full = read_manifest(librispeech_setup["data"] / "dev-clean.tsv")
    manifest = Manifest(full.root, full.paths[:6], full.sizes[:6], full.source)
    batched = compute_logprobs(am, manifest, batch_size=8, progress=False)
    single = compute_logprobs(am, manifest, batch_size=1, progress=False)
    assert len(batched) == len(manifest) == 6 and len({len(b) for b in batched}) > 1  # padding happens
    frames = am.model.frame_lengths(torch.tensor(manifest.sizes)).tolist()
    for b, s, n in zip(batched, single, frames):
        assert b.shape == s.shape == (n, len(am.vocab)) and b.dtype == np.float32
        np.testing.assert_allclose(b, s, atol=2e-4)
        np.testing.assert_allclose(np.exp(b).sum(axis=1), 1.0, atol=1e-4)


def _sclite_counts(out: Path) -> tuple[int, ...]:
    res = subprocess.run(["sctk", "sclite", "-r", str(out / "ref.trn"), "trn", "-h", str(out / "hyp.trn"), "trn",
                          "-i", "spu_id", "-s", "-o", "rsum", "stdout"], capture_output=True, text=True, check=True)
    m = re.search(r"\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", res.stdout)
    return tuple(int(x) for x in m.groups())


def _sclite_ctm_counts(out: Path) -> tuple[int, ...]:
    """(words, sub, del, ins) of sclite scoring hyp.ctm against ref.stm."""
    res = subprocess.run(["sctk", "sclite", "-h", str(out / "hyp.ctm"), "ctm", "-r", str(out / "ref.stm"), "stm",
                          "-o", "rsum", "stdout"], capture_output=True, text=True, check=True)
    m = re.search(r"\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", res.stdout)
    assert m, res.stdout[-3000:]
    _, wrd, _, sub, dele, ins = (int(x) for x in m.groups())
    return wrd, sub, dele, ins


def _check_nbest(out: Path, n: int) -> None:
    """nbest.jsonl: up to n distinct hypotheses per utterance, the first the 1-best of hyp.trn; the oracle
    is at most the 1-best error rate."""
    hyps = read_trn(out / "hyp.trn")
    lines = [json.loads(x) for x in (out / "nbest.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == list(hyps)
    for line in lines:
        entries = line["hyps"]
        assert 1 <= len(entries) <= n and entries[0]["text"].split() == hyps[line["id"]]
        assert len({e["text"] for e in entries}) == len(entries)
        assert all(set(e) == {"text", "am", "lm", "words", "score"} and e["words"] == len(e["text"].split())
                   for e in entries)
    summary = json.loads((out / "wer.json").read_text())
    # the oracle: each utterance scored by its N-best entry with the fewest errors
    refs = read_trn(out / "ref.trn")
    oracle = sum(min(align(refs[x["id"]], e["text"].split()).counts.errors for e in x["hyps"]) for x in lines)
    assert summary["oracle_wer"] == pytest.approx(100 * oracle / summary["ref_tokens"], abs=1e-4)
    assert summary["oracle_wer"] <= summary["wer"]
    assert any(len(x["hyps"]) > 1 for x in lines)


def _confidence_scores(out: Path) -> tuple[float | None, float]:
    """(AUC, ECE) of hyp.ctm's word confidences for right against wrong words, computed here from their
    definitions: right words are those the alignment of hyp.trn with ref.trn matches; the AUC is the
    share of (right, wrong) pairs the confidence orders correctly, ties counting half; the ECE sums, over
    the 10 bins [0, 0.1), ..., [0.9, 1], the bin's share of words times |mean confidence - share right|."""
    refs, hyps = read_trn(out / "ref.trn"), read_trn(out / "hyp.trn")
    conf = {utt: [] for utt in hyps}
    for line in (out / "hyp.ctm").read_text().splitlines():
        f = line.split()
        conf[f[0]].append(float(f[5]))
    pairs = [(c, r == h) for utt in sorted(hyps)
             for c, (r, h) in zip(conf[utt], [p for p in align(refs[utt], hyps[utt]).pairs if p[1] is not None])]
    right = [c for c, ok in pairs if ok]
    wrong = [c for c, ok in pairs if not ok]
    auc = None
    if right and wrong:
        auc = sum((a > b) + 0.5 * (a == b) for a in right for b in wrong) / (len(right) * len(wrong))
    ece = 0.0
    for b in range(10):
        sel = [(c, ok) for c, ok in pairs if min(int(c * 10), 9) == b]
        if sel:
            ece += len(sel) / len(pairs) * abs(sum(c for c, _ in sel) / len(sel) - sum(ok for _, ok in sel) / len(sel))
    return auc, ece


def test_decode_command_blank_model_deletes_every_word(librispeech_setup, tmp_path):
    s = librispeech_setup
    res = CliRunner().invoke(main, ["decode", "--checkpoint", str(s["blank"]), "--data", str(s["data"]),
                                    "--subset", "dev-clean", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "wer.json").read_text())
    n_words = sum(len(line.split()) for line in (s["data"] / "dev-clean.wrd").read_text().splitlines())
    assert summary["wer"] == 100.0 and summary["del"] == summary["errors"] == summary["ref_tokens"] == n_words
    assert summary["decoding"] == {"decoder": "greedy"} and summary["subset"] == "dev-clean"
    assert "WER 100.00%" in res.output and "dev-clean" in res.output
    hyp = (tmp_path / "out" / "hyp.trn").read_text().splitlines()
    assert all(line.startswith("(") for line in hyp)
    assert len(hyp) == len((s["data"] / "dev-clean.wrd").read_text().splitlines())
    assert "most frequent deletions" in (tmp_path / "out" / "errors.txt").read_text()


def test_decode_with_lm_in_worker_processes_agrees_with_sclite(librispeech_setup, tmp_path):
    s = librispeech_setup
    out = tmp_path / "lm"
    proc = subprocess.run([W2VTK, "decode", "--checkpoint", str(s["random"]), "--data", str(s["data"]),
                           "--subset", "dev-clean", "--out", str(out), "--lm", str(s["bin"]), "--lexicon",
                           str(s["lexicon"]), "--beam", "8", "--jobs", "2", "--word-score", "2", "--nbest", "4"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "wer.json").read_text())
    assert summary["decoding"]["decoder"] == "flashlight" and summary["decoding"]["beam"] == 8
    words = {line.split("\t")[0] for line in s["lexicon"].read_text().splitlines()}
    hyps = read_trn(out / "hyp.trn")
    refs = read_trn(out / "ref.trn")
    assert set(hyps) == set(refs) and any(hyps.values())
    assert all(w in words for h in hyps.values() for w in h)  # a lexicon decoder only produces lexicon words
    snt, wrd, corr, sub, dele, ins = _sclite_counts(out)
    assert (wrd, sub, dele, ins) == (summary["ref_tokens"], summary["sub"], summary["del"], summary["ins"])
    assert _sclite_ctm_counts(out) == (wrd, sub, dele, ins)
    _check_nbest(out, 4)


def test_ctm_of_greedy_and_lexicon_free_decoding_scores_as_wer_json(librispeech_setup, tmp_path):
    s = librispeech_setup
    for decoder in ("greedy", "pyctcdecode"):
        out = tmp_path / decoder
        lm = ["--lm", str(s["bin"]), "--lexicon", str(s["lexicon"]), "--nbest", "5", "--beam", "16"] if decoder != "greedy" else []
        res = CliRunner().invoke(main, ["decode", "--checkpoint", str(s["random"]), "--data", str(s["data"]),
                                        "--subset", "dev-clean", "--out", str(out), "--decoder", decoder, *lm])
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "wer.json").read_text())
        assert summary["ins"] + summary["sub"] > 0  # words are hypothesised, so the CTM is not empty
        assert _sclite_ctm_counts(out) == (summary["ref_tokens"], summary["sub"], summary["del"], summary["ins"])
        ctm = [line.split() for line in (out / "hyp.ctm").read_text().splitlines()]
        hyps = read_trn(out / "hyp.trn")
        assert [f[4] for f in ctm] == [w for utt in sorted(hyps) for w in hyps[utt]]
        # each utterance's words follow one another, without overlap, within its audio (times to the ms)
        ends = {f[0]: float(f[4]) for f in map(str.split, (out / "ref.stm").read_text().splitlines())}
        for utt in hyps:
            times = [(float(f[2]), float(f[3])) for f in ctm if f[0] == utt]
            bounds = [0.0] + [x for start, dur in times for x in (start, start + dur)] + [ends[utt]]
            assert all(a <= b + 0.0015 for a, b in zip(bounds, bounds[1:])), (utt, times, ends[utt])
            assert all(dur > 0 for _, dur in times)
        assert all(f[1] == "A" and 0 <= float(f[5]) <= 1 for f in ctm)
        # a random model gets (nearly) every word wrong: no AUC without right words, a large calibration error
        auc, ece = _confidence_scores(out)
        assert summary["confidence_auc"] == (None if auc is None else pytest.approx(auc, abs=2e-3))
        assert summary["confidence_ece"] == pytest.approx(ece, abs=2e-3)
        if decoder != "greedy":
            _check_nbest(out, 5)


def test_transcribe_matches_decode_and_reads_other_rates(librispeech_setup, tmp_path):
    from w2vtk.audio import read_audio, write_audio
    from w2vtk.manifest import read_manifest

    s = librispeech_setup
    out = tmp_path / "greedy"
    res = CliRunner().invoke(main, ["decode", "--checkpoint", str(s["random"]), "--data", str(s["data"]),
                                    "--subset", "dev-clean", "--out", str(out), "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    hyps = read_trn(out / "hyp.trn")
    manifest = read_manifest(s["data"] / "dev-clean.tsv")
    files = [manifest.abspath(i) for i in range(2)]
    wav8k = tmp_path / "eight.wav"
    import torchaudio.functional as AF

    audio = torch.from_numpy(read_audio(files[0]))
    write_audio(wav8k, AF.resample(audio, 16000, 8000).numpy(), sample_rate=8000)
    res = CliRunner().invoke(main, ["transcribe", "--checkpoint", str(s["random"]), *map(str, files), str(wav8k)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip("\n").split("\n")
    assert len(lines) == 3
    for f, line in zip(files, lines):
        path, text = line.split("\t")
        assert path == str(f) and text.split() == hyps[f.stem]
    assert lines[2].startswith(f"{wav8k}\t")


def test_phone_model_is_scored_as_per_on_39_phones(prepared_timit, tmp_path):
    from w2vtk.text import fold_to_39

    vocab = Vocabulary.from_dict_file(prepared_timit / "dict.phn.txt", "phn")
    ckpt = write_finetuned(tmp_path / "phn.pt", vocab, blank_only=True)
    refs = [line.split() for line in (prepared_timit / "dev.phn").read_text().splitlines()]
    for sil, flag in ((True, "--keep-sil"), (False, "--drop-sil")):
        res = CliRunner().invoke(main, ["decode", "--checkpoint", str(ckpt), "--data", str(prepared_timit),
                                        "--subset", "dev", "--out", str(tmp_path / flag), flag])
        assert res.exit_code == 0, res.output
        summary = json.loads((tmp_path / flag / "wer.json").read_text())
        # a model that outputs only blanks deletes every phone
        assert "wer" not in summary and "PER 100.00%" in res.output
        assert summary["per"] == 100.0 and summary["del"] == summary["errors"] == summary["ref_tokens"]
        assert summary["ref_tokens"] == sum(len(fold_to_39(r, keep_sil=sil)) for r in refs)
    assert json.loads((tmp_path / "--drop-sil" / "wer.json").read_text())["sil"] == "dropped"


def test_decode_refuses_bad_input_with_one_line_errors(librispeech_setup, tmp_path):
    from w2vtk.checkpoint import save_checkpoint
    from w2vtk.model import build_model

    s = librispeech_setup
    cfg = _small_cfg(0)
    save_checkpoint(tmp_path / "pre.pt", {"kind": "pretrain", "model_config": cfg.to_dict(),
                                          "model": build_model(cfg).state_dict()})
    base = ["decode", "--data", str(s["data"]), "--subset", "dev-clean", "--out", str(tmp_path / "o")]
    runner = CliRunner()
    res = runner.invoke(main, base + ["--checkpoint", str(tmp_path / "pre.pt")])
    assert res.exit_code == 2 and "without a CTC vocabulary" in res.output
    res = runner.invoke(main, ["decode", "--checkpoint", str(s["blank"]), "--data", str(s["data"]),
                               "--subset", "nope", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "nope.tsv" in res.output
    res = runner.invoke(main, base + ["--checkpoint", str(s["blank"]), "--decoder", "greedy", "--lm", str(s["arpa"])])
    assert res.exit_code == 2 and "greedy" in res.output
    res = runner.invoke(main, base + ["--checkpoint", str(s["blank"]), "--lm", str(s["bin"])])
    assert res.exit_code == 2 and "lexicon" in res.output
    assert not (tmp_path / "o").exists()


def test_token_pruning_keeps_each_frames_best_and_never_empties_the_search(lm_files):
    from w2vtk.decoding.flashlight_beam import PRUNED_LOGP, prune_tokens

    lp = np.log(np.array([[0.001, 0.01, 0.989], [0.0001, 0.0002, 0.0003]], dtype=np.float32))
    pruned, kept = prune_tokens(lp, -5.0)
    assert kept == 2
    assert pruned[0, 2] == lp[0, 2] and pruned[0, 1] == lp[0, 1] and pruned[0, 0] == PRUNED_LOGP
    assert pruned[1, 2] == lp[1, 2] and (pruned[1, :2] == PRUNED_LOGP).all()  # the best stays, however unlikely
    # K beats C by so much that C falls under the pruning limit: the lexicon has no KAT, and the search
    # must still produce the rest of the sentence rather than nothing
    rng = np.random.default_rng(8)
    noisy = emissions(SENTENCE, rng, {letter_index(SENTENCE, 1, 0): ("K", 8.0)})
    assert noisy[2 * 4, LTR.index("C")] < -5  # the C frames of CAT (after T H E |)
    options = DecoderOptions(decoder="flashlight", lm=str(lm_files / "3gram.arpa"), word_score=0.0)
    words = decode_batch([noisy], LTR, options)[0]
    assert words[0] == "THE" and words[-4:] == SENTENCE.split()[-4:]
    unpruned = DecoderOptions(decoder="flashlight", lm=str(lm_files / "3gram.arpa"), word_score=0.0,
                              token_min_logp=None)
    rng = np.random.default_rng(9)
    batch = [emissions(s, rng, {1: ("K", 0.5)}, noise=1.5) for s in LM_TEXT[:8]]
    assert decode_batch(batch, LTR, options) == decode_batch(batch, LTR, unpruned)


# ------------------------------------------------------------------ lexicon-free flashlight with a letter LM

def test_letter_lm_is_trained_on_spelled_sentences(lm_files):
    from w2vtk.lm import arpa_unigrams

    assert set(arpa_unigrams(lm_files / "letters.arpa")) - {"<s>", "</s>", "<unk>"} == set("|".join(LM_TEXT)) - {" "}


def test_lexicon_free_flashlight_fixes_letters_and_spells_words_outside_the_lm(lm_files):
    rng = np.random.default_rng(10)
    options = DecoderOptions(decoder="flashlight-lexicon-free", lm=str(lm_files / "letters.arpa"), lm_weight=2.0,
                             word_score=0.0)
    noisy = emissions(SENTENCE, rng, {letter_index(SENTENCE, 1, 0): ("K", 1.0),
                                      letter_index(SENTENCE, 5, 0): ("N", 1.0)})
    assert decode_batch([noisy], LTR, DecoderOptions()) != [SENTENCE.split()]
    assert decode_batch([noisy], LTR, options) == [SENTENCE.split()]
    # RUG is in neither the LM text nor the lexicon: the lexicon search cannot produce it, this one can
    outside = "THE CAT SAT ON THE RUG"
    clear = emissions(outside, rng)
    assert decode_batch([clear], LTR, options) == [outside.split()]
    lexicon = DecoderOptions(decoder="flashlight", lm=str(lm_files / "3gram.arpa"), word_score=0.0)
    assert "RUG" not in decode_batch([clear], LTR, lexicon)[0]
    with DecoderPool(LTR, jobs=2) as pool:
        hyps = pool.decode_nbest([noisy, clear], options, nbest=3)
    assert [h[0].words for h in hyps] == [SENTENCE.split(), outside.split()]
    assert all(h.lm < 0 for h in hyps[0]) and [s.word for s in hyps[1][0].spans] == outside.split()


def test_lexicon_free_flashlight_refuses_a_word_lm_and_a_lexicon(lm_files):
    lp = emissions(SENTENCE, np.random.default_rng(11))
    word_lm = DecoderOptions(decoder="flashlight-lexicon-free", lm=str(lm_files / "3gram.arpa"))
    with pytest.raises(DecodingError, match=r"3gram\.arpa: .*lm train --letters"):
        decode_batch([lp], LTR, word_lm)
    with pytest.raises(DecodingError, match="uses no lexicon"):
        decode_batch([lp], LTR, DecoderOptions(decoder="flashlight-lexicon-free", lm=str(lm_files / "letters.arpa"),
                                               lexicon=str(lm_files / "lexicon.txt")))

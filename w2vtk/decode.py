"""Decoding a subset with a fine-tuned checkpoint, and transcribing audio files.

    checkpoint --(model, eval, inference_mode)--> (frame, vocab) log-probabilities per utterance
               --(w2vtk.decoding: greedy or beam search with an LM)--> words, N-best hypotheses
               --(w2vtk.word_timing)--> word times and confidences
               --(w2vtk.scoring, sclite's counts)--> hyp.trn, ref.trn, hyp.ctm, ref.stm, errors.txt, wer.json

Utterances are batched by length (padded, with lengths, so padding never changes a result) and
log-probabilities can be cached per checkpoint and subset, so that LM-weight tuning computes them once.
Phone models are scored as PER after folding hypotheses and references to the 39 TIMIT scoring phones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from w2vtk.audio import SAMPLE_RATE
from w2vtk.decoding import DecoderOptions, DecoderPool, Hypothesis
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_open, atomic_write_text
from w2vtk.manifest import Manifest, read_labels, read_manifest
from w2vtk.scoring import ErrorCounts, errors_report, score_corpus, summary_dict, summary_line, write_trn
from w2vtk.long_audio import DEFAULT_CHUNK_SECONDS, DEFAULT_CONTEXT_SECONDS
from w2vtk.text import Vocabulary, letters_to_words
from w2vtk.word_timing import FrameClock, TimedWord, timed_words

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1_600_000  # padded samples per forward batch (100 s of audio)
DEFAULT_BATCH_SIZE = 16         # utterances per forward batch


@dataclass
class AcousticModel:
    """A fine-tuned model ready for inference, its output vocabulary, and its input normalisation."""

    model: object  # w2vtk.model.wav2vec2.Wav2Vec2Model, in eval mode
    vocab: Vocabulary
    normalize: bool
    path: Path
    device: str


def load_acoustic_model(path: str | os.PathLike, device: str | None = None) -> AcousticModel:
    """Load a fine-tuned checkpoint; its "vocab" and "labels" give the vocabulary. `device`: a torch
    device name; None: CUDA when available, else the CPU."""
    from w2vtk.checkpoint import CheckpointError, load_checkpoint
    from w2vtk.device import inference_device
    from w2vtk.model.wav2vec2 import model_from_checkpoint

    path = Path(path)
    ckpt = load_checkpoint(path)
    symbols, kind = ckpt.get("vocab"), ckpt.get("labels")
    if not symbols or kind is None:
        raise CheckpointError(f"{path}: a {ckpt.get('kind', 'pretraining')} checkpoint without a CTC vocabulary; "
                              "decode a fine-tuned one (`w2vtk finetune` writes them)")
    vocab = Vocabulary.from_list(symbols, kind)
    model = model_from_checkpoint(ckpt, path)
    data_cfg = (ckpt.get("train_config") or {}).get("data") or {}
    normalize = bool(model.cfg.normalize or data_cfg.get("normalize", False))
    from w2vtk.cpu import use_cpu_kernels

    device = inference_device(device)
    use_cpu_kernels(model, device).to(device).eval()
    return AcousticModel(model, vocab, normalize, path, device)


def utterance_ids(manifest: Manifest) -> list[str]:
    """File stems when they are unique (LibriSpeech), else the relative paths without extension with
    `/` turned into `-` (TIMIT's sentence names repeat across speakers)."""
    stems = [Path(p).stem for p in manifest.paths]
    if len(set(stems)) == len(stems):
        return stems
    ids = [str(Path(p).with_suffix("")).strip("/").replace("/", "-") for p in manifest.paths]
    if len(set(ids)) != len(ids):
        raise W2vtkError(f"{manifest.source}: the same audio file is listed twice; re-run `w2vtk prepare`")
    return ids


def compute_logprobs(am: AcousticModel, manifest: Manifest, max_tokens: int = DEFAULT_MAX_TOKENS,
                     batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> list[np.ndarray]:
    """(frame, vocab) float32 log-probabilities for every manifest line, in manifest order.

    Audio shorter than the CNN's receptive field gets a (0, vocab) array (an empty hypothesis).
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from w2vtk.dataset import AudioDataset

    if len(manifest) == 0:
        raise W2vtkError(f"{manifest.source}: lists no audio; nothing to decode")
    empty = np.zeros((0, len(am.vocab)), dtype=np.float32)
    out = [empty] * len(manifest)
    sizes = np.asarray(manifest.sizes, dtype=np.int64)
    min_samples = am.model.cfg.receptive_field  # shorter audio yields no frame
    if not (sizes >= min_samples).any():
        log.warning("%s: no utterance is long enough (%d samples) to decode", manifest.source, min_samples)
        return out
    ds = AudioDataset(manifest, crop=False, max_sample_size=int(sizes.max()), min_sample_size=min_samples,
                      normalize=am.normalize, seed=0)
    if ds.skipped:
        log.warning("%s: %d utterance(s) shorter than %d samples get empty hypotheses", manifest.source,
                    ds.skipped, min_samples)
    # sorted by length, cut under the padded-sample budget and the utterance count
    order = np.argsort(ds.sizes, kind="stable")
    batches: list[list[int]] = []
    for pos in order:
        cur = batches[-1] if batches else None
        if cur is None or len(cur) >= batch_size or (len(cur) + 1) * int(ds.sizes[pos]) > max_tokens:
            batches.append([int(pos)])
        else:
            cur.append(int(pos))
    bar = tqdm(total=len(ds), desc="acoustic model", unit="utt", disable=not progress)
    with torch.inference_mode():
        for positions in batches:
            batch = ds.__getitems__(positions)
            wav = batch.wav.to(am.device)
            lengths = batch.lengths.to(am.device)
            logits, frames = am.model.ctc_logits(wav, lengths)
            lprobs = F.log_softmax(logits.float(), dim=-1).cpu().numpy()
            frames = frames.cpu().numpy() if frames is not None else [lprobs.shape[1]] * len(positions)
            for j, line in enumerate(batch.ids.tolist()):
                out[line] = np.ascontiguousarray(lprobs[j, : int(frames[j])])
            bar.update(len(positions))
    bar.close()
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cached_logprobs(am: AcousticModel, manifest: Manifest, cache_dir: str | os.PathLike, **kw) -> list[np.ndarray]:
    """`compute_logprobs`, stored in `cache_dir` under a key of the checkpoint's and manifest's contents."""
    key = hashlib.sha256()
    key.update(_file_digest(am.path).encode())
    key.update(_file_digest(manifest.source).encode() if manifest.source else repr(manifest.paths).encode())
    key.update(f"normalize={am.normalize}".encode())
    name = manifest.source.stem if manifest.source else "audio"
    path = Path(cache_dir) / f"{name}-{key.hexdigest()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                lengths, data = z["lengths"], z["logprobs"]
            if len(lengths) == len(manifest) and data.shape[1] == len(am.vocab):
                log.info("log-probabilities from the cache %s", path)
                return np.split(data, np.cumsum(lengths)[:-1])
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable cache file %s (%s)", path, e)
    out = compute_logprobs(am, manifest, **kw)
    with atomic_open(path, "wb") as f:
        np.savez(f, lengths=np.array([len(x) for x in out], dtype=np.int64), logprobs=np.concatenate(out))
    log.info("cached log-probabilities in %s", path)
    return out


# ------------------------------------------------------------------------------------- scoring

def metric_for(vocab: Vocabulary) -> str:
    return "per" if vocab.kind == "phn" else "wer"


def scoring_tokens(words: Sequence[str], vocab: Vocabulary, fold_phones: bool = True,
                   keep_sil: bool = True) -> list[str]:
    """Tokens that are scored: words, or for phone models phones folded to the 39-phone set."""
    if vocab.kind != "phn" or not fold_phones:
        return list(words)
    from w2vtk.text import fold_to_39

    return fold_to_39(words, keep_sil)


def read_references(data_dir: str | os.PathLike, subset: str, manifest: Manifest, vocab: Vocabulary,
                    fold_phones: bool = True, keep_sil: bool = True) -> list[list[str]]:
    """Reference tokens per manifest line: `<subset>.phn` for phone models, else `<subset>.wrd`
    (or words rebuilt from `<subset>.ltr` when there is no .wrd)."""
    data_dir = Path(data_dir)
    tsv = data_dir / f"{subset}.tsv"
    if vocab.kind == "phn":
        lines = read_labels(data_dir / f"{subset}.phn", len(manifest), tsv)
        refs = []
        for n, line in enumerate(lines, 1):
            try:
                refs.append(scoring_tokens(line.split(), vocab, fold_phones, keep_sil))
            except W2vtkError as e:
                raise W2vtkError(f"{data_dir / f'{subset}.phn'}:{n}: {e}; score without folding "
                                 "(--no-fold-phones) if these are not TIMIT phones") from None
        return refs
    if (data_dir / f"{subset}.wrd").is_file():
        return [line.split() for line in read_labels(data_dir / f"{subset}.wrd", len(manifest), tsv)]
    if (data_dir / f"{subset}.ltr").is_file():
        return [letters_to_words(line.split()) for line in read_labels(data_dir / f"{subset}.ltr", len(manifest), tsv)]
    raise W2vtkError(f"{data_dir}: neither {subset}.wrd nor {subset}.ltr exists to score against; "
                     "run `w2vtk prepare` for this subset")


def write_scores(out_dir: str | os.PathLike, utt_ids: Sequence[str], refs: Sequence[Sequence[str]],
                 hyps: Sequence[Sequence[str]], metric: str, extra: dict | None = None,
                 timed: Sequence[Sequence[TimedWord]] | None = None, durations: Sequence[float] | None = None,
                 nbest: Sequence[Sequence[Sequence[str]]] | None = None) -> ErrorCounts:
    """hyp.trn, ref.trn, errors.txt and wer.json in `out_dir`; returns the totals.

    With `timed` (each hypothesis' words with times and confidences) and `durations` (seconds per
    utterance), also hyp.ctm and ref.stm, and the confidences' AUC and calibration error in wer.json.
    With `nbest` (the scored tokens of each utterance's hypotheses), the N-best oracle error rate.
    """
    from w2vtk.calibration import correct_words, expected_calibration_error, roc_auc

    out_dir = Path(out_dir)
    total, alignments = score_corpus(refs, hyps)
    write_trn(out_dir / "ref.trn", utt_ids, refs)
    write_trn(out_dir / "hyp.trn", utt_ids, hyps)
    atomic_write_text(out_dir / "errors.txt", errors_report(utt_ids, alignments, metric))
    summary = summary_dict(total, metric)
    if timed is not None:
        write_ctm_stm(out_dir, utt_ids, refs, timed, durations)
        conf = [w.confidence for words in timed for w in words]
        right = [c for al in alignments for c in correct_words(al)]
        auc, ece = roc_auc(conf, right), expected_calibration_error(conf, right)
        summary["confidence_auc"] = None if auc is None else round(auc, 4)
        summary["confidence_ece"] = None if ece is None else round(ece, 4)
    if nbest is not None:
        oracle = oracle_errors(refs, nbest).rate()
        summary["oracle_wer" if metric == "wer" else f"oracle_{metric}"] = None if oracle is None else round(oracle, 4)
    summary |= extra or {}
    atomic_write_text(out_dir / "wer.json", json.dumps(summary, indent=2) + "\n")
    return total


def write_ctm_stm(out_dir: Path, utt_ids: Sequence[str], refs: Sequence[Sequence[str]],
                  timed: Sequence[Sequence[TimedWord]], durations: Sequence[float]) -> None:
    """hyp.ctm (the hypotheses' words, times and confidences) and ref.stm (one segment per utterance),
    which `sctk sclite -h hyp.ctm ctm -r ref.stm stm` scores as hyp.trn against ref.trn."""
    from w2vtk.transcripts import ctm_lines, stm_line

    order = sorted(range(len(utt_ids)), key=lambda i: utt_ids[i])  # sclite wants files in sorted order
    ctm = [line for i in order for line in ctm_lines(utt_ids[i], timed[i])]
    stm = [stm_line(utt_ids[i], utt_ids[i], 0.0, durations[i], refs[i]) for i in order]
    atomic_write_text(out_dir / "hyp.ctm", "".join(line + "\n" for line in ctm))
    atomic_write_text(out_dir / "ref.stm", "".join(line + "\n" for line in stm))


def oracle_errors(refs: Sequence[Sequence[str]], nbest: Sequence[Sequence[Sequence[str]]]) -> ErrorCounts:
    """Errors when each utterance takes the hypothesis of its N-best list closest to the reference."""
    from w2vtk.scoring import align

    total = ErrorCounts(0, 0, 0, 0, 0, 0)
    for ref, hyps in zip(refs, nbest):
        counts = [align(ref, h).counts for h in hyps] or [align(ref, []).counts]
        total = total + min(counts, key=lambda c: c.errors)
    return total


def scored_timed_words(words: Sequence[TimedWord], vocab: Vocabulary, fold_phones: bool = True,
                       keep_sil: bool = True) -> list[TimedWord]:
    """`scoring_tokens` applied word by word, keeping each word's time (phone folding maps one phone
    to at most one)."""
    import dataclasses

    out = []
    for w in words:
        out += [dataclasses.replace(w, word=t) for t in scoring_tokens([w.word], vocab, fold_phones, keep_sil)]
    return out


def hypothesis_words(hyp: Hypothesis, logprobs: np.ndarray, clock: FrameClock, vocab: Vocabulary,
                     first_frame: int = 0) -> list[TimedWord]:
    """The timed words of a hypothesis: from its spans, or (a decoder that gave none) from a forced
    alignment of its words."""
    spans = hyp.spans
    if not spans and hyp.words:
        from w2vtk.alignment import align_words

        spans = align_words(logprobs, hyp.words, vocab)
    return timed_words(spans, logprobs, clock, first_frame)


def _options_record(options: DecoderOptions) -> dict:
    record = asdict(options)
    record["unk_score"] = None if record["unk_score"] == float("-inf") else record["unk_score"]
    if options.decoder == "greedy":
        record = {"decoder": "greedy"}
    return record


def decode_subset(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, subset: str,
                  out_dir: str | os.PathLike, options: DecoderOptions, jobs: int = 1,
                  max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE,
                  fold_phones: bool = True, keep_sil: bool = True, cache_dir: str | os.PathLike | None = None,
                  device: str | None = None, nbest: int | None = None) -> tuple[ErrorCounts, str]:
    """Decode `DATA/<subset>.tsv`, score it and write the reports into `out_dir`; with `nbest`, also
    nbest.jsonl (up to `nbest` hypotheses per utterance) and the oracle error rate.

    Returns the totals and the one-line summary.
    """
    from w2vtk.decoding import check_options

    if nbest is not None and nbest < 1:
        raise W2vtkError(f"--nbest {nbest}: give at least 1 hypothesis per utterance")
    am = load_acoustic_model(checkpoint, device)
    check_options(options, am.vocab)  # before the acoustic model's work
    manifest = read_manifest(Path(data_dir) / f"{subset}.tsv")
    refs = read_references(data_dir, subset, manifest, am.vocab, fold_phones, keep_sil)
    ids = utterance_ids(manifest)
    kw = dict(max_tokens=max_tokens, batch_size=batch_size)
    logprobs = cached_logprobs(am, manifest, cache_dir, **kw) if cache_dir else compute_logprobs(am, manifest, **kw)
    with DecoderPool(am.vocab, jobs) as pool:
        nbests = pool.decode_nbest(logprobs, options, nbest or 1, progress=True)
    metric = metric_for(am.vocab)

    def scored(words):
        return scoring_tokens(words, am.vocab, fold_phones, keep_sil)

    hyps = [scored(h[0].words) for h in nbests]
    clock = FrameClock.of(am.model.cfg)
    timed = [scored_timed_words(hypothesis_words(h[0], lp, clock, am.vocab), am.vocab, fold_phones, keep_sil)
             for h, lp in zip(nbests, logprobs)]
    durations = [size / SAMPLE_RATE for size in manifest.sizes]
    extra = {"subset": subset, "checkpoint": str(checkpoint), "decoding": _options_record(options)}
    if metric == "per":
        extra["phones"] = "39 (folded)" if fold_phones else "as labelled"
        extra["sil"] = "counted" if keep_sil else "dropped"
    if nbest is not None:
        lines = [json.dumps({"id": i, "hyps": [h.record() for h in hs]}) for i, hs in zip(ids, nbests)]
        atomic_write_text(Path(out_dir) / "nbest.jsonl", "".join(line + "\n" for line in lines))
    total = write_scores(out_dir, ids, refs, hyps, metric, extra, timed=timed, durations=durations,
                         nbest=[[scored(h.words) for h in hs] for hs in nbests] if nbest is not None else None)
    line = f"{subset}: {summary_line(total, metric)} [{options.describe()}] -> {out_dir}"
    return total, line


@dataclass
class Transcript:
    """One audio file's transcript: its words with times and confidences, and its N-best hypotheses
    (the first is the 1-best)."""

    path: str
    duration: float
    words: list[TimedWord]
    hyps: list[Hypothesis]


def transcribe(checkpoint: str | os.PathLike, audio: Sequence[str | os.PathLike], options: DecoderOptions,
               jobs: int = 1, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE,
               device: str | None = None, nbest: int = 1, chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
               context_seconds: float = DEFAULT_CONTEXT_SECONDS) -> list[Transcript]:
    """Transcripts of audio files (any format and rate `w2vtk.audio` reads).

    Files longer than a window (`chunk_seconds` + 2 `context_seconds`) run through the model window by
    window (w2vtk.long_audio) and are decoded as one utterance; shorter ones are batched.
    """
    from w2vtk.audio import audio_info
    from w2vtk.decoding import check_options
    from w2vtk.long_audio import chunked_logprobs

    if nbest < 1:
        raise W2vtkError(f"--nbest {nbest}: give at least 1 hypothesis per file")
    if chunk_seconds <= 0 or context_seconds < 0:
        raise W2vtkError(f"--chunk-seconds {chunk_seconds:g} / --context-seconds {context_seconds:g}: the chunk "
                         "must be positive and the context at least 0")
    am = load_acoustic_model(checkpoint, device)
    check_options(options, am.vocab)
    paths = [str(Path(p).resolve()) for p in audio]
    sizes = [audio_info(p).num_samples for p in paths]
    window = (chunk_seconds + 2 * context_seconds) * SAMPLE_RATE
    long = [i for i, n in enumerate(sizes) if n > window]
    short = [i for i, n in enumerate(sizes) if n <= window]
    logprobs: list[np.ndarray] = [np.zeros((0, len(am.vocab)), np.float32)] * len(paths)
    if short:
        manifest = Manifest(Path("/"), [paths[i] for i in short], [sizes[i] for i in short])
        for i, lp in zip(short, compute_logprobs(am, manifest, max_tokens=max_tokens, batch_size=batch_size,
                                                 progress=len(short) > 1)):
            logprobs[i] = lp
    for i in long:
        logprobs[i] = chunked_logprobs(am, paths[i], chunk_seconds, context_seconds)
    clock = FrameClock.of(am.model.cfg)
    with DecoderPool(am.vocab, jobs) as pool:
        nbests = pool.decode_nbest(logprobs, options, nbest, progress=len(paths) > 1 or bool(long))
    return [Transcript(str(path), size / SAMPLE_RATE, hypothesis_words(hyps[0], lp, clock, am.vocab), hyps)
            for path, size, lp, hyps in zip(audio, sizes, logprobs, nbests)]

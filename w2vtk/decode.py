"""Decoding a subset with a fine-tuned checkpoint, and transcribing audio files.

    checkpoint --(model, eval, inference_mode)--> (frame, vocab) log-probabilities per utterance
               --(w2vtk.decoding: greedy or beam search with an LM)--> words
               --(w2vtk.scoring, sclite's counts)--> hyp.trn, ref.trn, errors.txt, wer.json

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

from w2vtk.decoding import DecoderOptions, DecoderPool
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_open, atomic_write_text
from w2vtk.manifest import Manifest, read_labels, read_manifest
from w2vtk.scoring import ErrorCounts, errors_report, score_corpus, summary_dict, summary_line, write_trn
from w2vtk.text import Vocabulary, letters_to_words

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
    """Load a fine-tuned checkpoint; its "vocab" and "labels" give the vocabulary."""
    import torch

    from w2vtk.checkpoint import CheckpointError, load_checkpoint
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

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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
                 hyps: Sequence[Sequence[str]], metric: str, extra: dict | None = None) -> ErrorCounts:
    """hyp.trn, ref.trn, errors.txt and wer.json in `out_dir`; returns the totals."""
    out_dir = Path(out_dir)
    total, alignments = score_corpus(refs, hyps)
    write_trn(out_dir / "ref.trn", utt_ids, refs)
    write_trn(out_dir / "hyp.trn", utt_ids, hyps)
    atomic_write_text(out_dir / "errors.txt", errors_report(utt_ids, alignments, metric))
    summary = summary_dict(total, metric) | (extra or {})
    atomic_write_text(out_dir / "wer.json", json.dumps(summary, indent=2) + "\n")
    return total


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
                  device: str | None = None) -> tuple[ErrorCounts, str]:
    """Decode `DATA/<subset>.tsv`, score it and write the reports into `out_dir`.

    Returns the totals and the one-line summary.
    """
    from w2vtk.decoding import check_options

    am = load_acoustic_model(checkpoint, device)
    check_options(options, am.vocab)  # before the acoustic model's work
    manifest = read_manifest(Path(data_dir) / f"{subset}.tsv")
    refs = read_references(data_dir, subset, manifest, am.vocab, fold_phones, keep_sil)
    ids = utterance_ids(manifest)
    kw = dict(max_tokens=max_tokens, batch_size=batch_size)
    logprobs = cached_logprobs(am, manifest, cache_dir, **kw) if cache_dir else compute_logprobs(am, manifest, **kw)
    with DecoderPool(am.vocab, jobs) as pool:
        words = pool.decode(logprobs, options, progress=True)
    metric = metric_for(am.vocab)
    hyps = [scoring_tokens(w, am.vocab, fold_phones, keep_sil) for w in words]
    extra = {"subset": subset, "checkpoint": str(checkpoint), "decoding": _options_record(options)}
    if metric == "per":
        extra["phones"] = "39 (folded)" if fold_phones else "as labelled"
        extra["sil"] = "counted" if keep_sil else "dropped"
    total = write_scores(out_dir, ids, refs, hyps, metric, extra)
    line = f"{subset}: {summary_line(total, metric)} [{options.describe()}] -> {out_dir}"
    return total, line


def transcribe(checkpoint: str | os.PathLike, audio: Sequence[str | os.PathLike], options: DecoderOptions,
               jobs: int = 1, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE,
               device: str | None = None) -> list[list[str]]:
    """Words for each audio file (any format and rate `w2vtk.audio` reads)."""
    from w2vtk.audio import audio_info
    from w2vtk.decoding import check_options

    am = load_acoustic_model(checkpoint, device)
    check_options(options, am.vocab)
    paths = [str(Path(p).resolve()) for p in audio]
    manifest = Manifest(Path("/"), paths, [audio_info(p).num_samples for p in paths])
    logprobs = compute_logprobs(am, manifest, max_tokens=max_tokens, batch_size=batch_size,
                                progress=len(paths) > 1)
    with DecoderPool(am.vocab, jobs) as pool:
        return pool.decode(logprobs, options)

"""CTC decoding of (frame, vocab) log-probabilities into words.

    greedy       best path: argmax per frame, repeats merged, blanks dropped
    pyctcdecode  lexicon-free beam search with a KenLM n-gram (Python)
    flashlight   lexicon beam search with a KenLM n-gram (C++; the paper's decoder)
    flashlight-lexicon-free  beam search over letters with a KenLM letter n-gram (C++)

`decode_batch` decodes a whole set in one call, over worker processes; `DecoderPool` keeps the
workers (and their loaded LMs) for repeated calls, as LM-weight tuning needs.
"""
from w2vtk.decoding.options import DECODERS, DecoderOptions, DecodingError, Hypothesis, check_options
from w2vtk.decoding.parallel import DecoderPool, decode_batch, make_decoder

__all__ = ["DECODERS", "DecoderOptions", "DecodingError", "DecoderPool", "Hypothesis", "check_options", "decode_batch",
           "make_decoder"]

"""Small corpora synthesized with espeak-ng, in the exact disc layouts of LibriSpeech and TIMIT.

The text is the Harvard sentences (IEEE 1969, public domain; w2vtk/data/). Speakers are espeak-ng
voices (accents x male/female variants) with their own pitch and speed, jittered per utterance;
training and evaluation subsets use different speakers, but may share sentences, so that a small
model and an n-gram trained on `lm-text.txt` can do well on dev/test within minutes on a CPU.

  espeak.py        running espeak-ng and sox: audio at 16 kHz, IPA phonemes
  common.py        sentences, speakers, the work pool, publishing finished folders
  timit_phones.py  IPA -> TIMIT 61 phones, words, approximate phone boundaries
  librispeech.py   LibriSpeech/<subset>/<speaker>/<chapter>/*.flac + trans.txt, lm-text.txt
  timit.py         TIMIT/{TRAIN,TEST}/DR<n>/<speaker>/*.{WAV,PHN,WRD,TXT}

Output is byte-identical for the same options and --seed, whatever --jobs is.
"""
from w2vtk.synth.librispeech import synth_librispeech
from w2vtk.synth.timit import synth_timit

__all__ = ["synth_librispeech", "synth_timit"]

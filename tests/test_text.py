import pytest

from w2vtk.errors import W2vtkError
from w2vtk.text import (PHONES_39, PHONES_48, PHONES_61, SPECIAL_SYMBOLS, TranscriptError, Vocabulary,
                        fold_48_to_39, fold_61_to_39, fold_61_to_48, fold_phones, fold_to_39, letters_to_words,
                        normalize_sentence, transcript_to_letters)


# --- letters ---------------------------------------------------------------------------------
def test_letters_put_a_bar_after_every_word():
    assert transcript_to_letters("HELLO WORLD") == "H E L L O | W O R L D |"
    assert transcript_to_letters("IT'S  A\tTEST") == "I T ' S | A | T E S T |"
    assert transcript_to_letters("") == ""
    assert transcript_to_letters("don't") == "D O N ' T |"


@pytest.mark.parametrize("bad, char", [("HELLO, WORLD", ","), ("HELLO-THERE", "-"), ("CAFÉ", "É"), ("R2D2", "2")])
def test_letters_reject_characters_outside_the_vocabulary(bad, char):
    with pytest.raises(TranscriptError, match=repr(char)):
        transcript_to_letters(bad)


def test_letters_round_trip_to_words():
    text = "THE BIRCH CANOE SLID ON THE SMOOTH PLANKS"
    assert letters_to_words(transcript_to_letters(text).split()) == text.split()


def test_normalize_sentence_uppercases_and_splits_hyphens():
    assert normalize_sentence("A zestful food is the hot-cross bun.") == "A ZESTFUL FOOD IS THE HOT CROSS BUN"
    assert normalize_sentence("Cheap clothes are flashy but don\u2019t last!") == \
        "CHEAP CLOTHES ARE FLASHY BUT DON'T LAST"
    with pytest.raises(TranscriptError, match="'4'"):
        normalize_sentence("Take 4 pills.")


# --- TIMIT phone sets --------------------------------------------------------------------------
def test_phone_set_sizes():
    assert len(PHONES_61) == len(set(PHONES_61)) == 61
    assert len(PHONES_48) == len(set(PHONES_48)) == 48
    assert len(PHONES_39) == len(set(PHONES_39)) == 39
    assert {"vcl", "cl", "sil", "epi"} <= set(PHONES_48)
    assert "sil" in PHONES_39 and "dx" in PHONES_39 and "q" not in PHONES_39


# The whole 61 -> 39 folding of Lee & Hon (1989), as written in REFERENCE.md.
FOLD_39 = {"ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "hv": "hh", "ix": "ih", "el": "l", "em": "m",
           "en": "n", "nx": "n", "eng": "ng", "zh": "sh", "ux": "uw", "bcl": "sil", "dcl": "sil", "gcl": "sil",
           "pcl": "sil", "tcl": "sil", "kcl": "sil", "h#": "sil", "pau": "sil", "epi": "sil"}


@pytest.mark.parametrize("phone", [p for p in PHONES_61 if p != "q"])
def test_fold_61_to_39_table(phone):
    assert fold_61_to_39([phone]) == [FOLD_39.get(phone, phone)]


# Kaldi's phones.60-48-39.map, 48 column, where it differs from the identity.
FOLD_48 = {"ax-h": "ax", "axr": "er", "bcl": "vcl", "dcl": "vcl", "gcl": "vcl", "em": "m", "eng": "ng",
           "h#": "sil", "pau": "sil", "hv": "hh", "kcl": "cl", "pcl": "cl", "tcl": "cl", "nx": "n", "ux": "uw"}


@pytest.mark.parametrize("phone", [p for p in PHONES_61 if p != "q"])
def test_fold_61_to_48_table(phone):
    assert fold_61_to_48([phone]) == [FOLD_48.get(phone, phone)]
    # Going through 48 lands on the same 39 phone as folding directly.
    assert fold_48_to_39(fold_61_to_48([phone])) == fold_61_to_39([phone])


def test_q_is_deleted_and_sil_kept_by_default():
    seq = ["h#", "q", "ix", "tcl", "t", "s", "pau", "h#"]
    assert fold_61_to_39(seq) == ["sil", "ih", "sil", "t", "s", "sil", "sil"]
    assert fold_61_to_48(seq) == ["sil", "ix", "cl", "t", "s", "sil", "sil"]
    assert fold_phones(seq, 61) == ["h#", "ix", "tcl", "t", "s", "pau", "h#"]


def test_sil_can_be_dropped():
    seq = ["h#", "bcl", "b", "epi", "ae", "pau", "h#"]
    assert fold_61_to_39(seq, keep_sil=False) == ["b", "ae"]
    assert fold_61_to_48(seq, keep_sil=False) == ["vcl", "b", "epi", "ae"]
    assert fold_phones(seq, 61, keep_sil=False) == ["bcl", "b", "epi", "ae"]
    assert fold_to_39(["vcl", "b", "cl", "sil"], keep_sil=False) == ["b"]


def test_unknown_phones_are_named():
    with pytest.raises(W2vtkError, match="'xx'"):
        fold_61_to_39(["h#", "xx"])
    with pytest.raises(W2vtkError, match="'vcl'"):
        fold_61_to_48(["vcl"])  # a 48-set symbol is not a 61-set phone
    with pytest.raises(W2vtkError, match="39, 48 or 61"):
        fold_phones(["aa"], 40)


# --- vocabulary --------------------------------------------------------------------------------
def _dict(tmp_path, text, name="dict.ltr.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_vocabulary_layout_follows_fairseq(tmp_path):
    vocab = Vocabulary.from_dict_file(_dict(tmp_path, "| 10\nE 7\nT 5\n' 1\n"), "ltr")
    assert vocab.symbols == SPECIAL_SYMBOLS + ["|", "E", "T", "'"]
    assert vocab.index("<s>") == 0 and len(vocab) == 8
    assert vocab.encode("T E E | ' |") == [6, 5, 5, 4, 7, 4]
    assert vocab.tokens([6, 5]) == ["T", "E"]
    assert vocab.word_separator == "|"
    assert Vocabulary.from_list(vocab.to_list(), "ltr") == vocab


def test_vocabulary_to_words_per_kind(tmp_path):
    ltr = Vocabulary.from_dict_file(_dict(tmp_path, "| 3\nA 2\nB 1\n"), "ltr")
    assert ltr.to_words(ltr.encode("A B | B A |")) == ["AB", "BA"]
    assert ltr.to_words([0, 5, 1, 4, 6]) == ["A", "B"]  # special symbols dropped
    phn = Vocabulary.from_dict_file(_dict(tmp_path, "sil 5\naa 3\n", "dict.phn.txt"), "phn")
    assert phn.to_words(phn.encode("sil aa sil")) == ["sil", "aa", "sil"]
    assert phn.word_separator is None
    sp = Vocabulary.from_list(SPECIAL_SYMBOLS + ["\u2581THE", "\u2581CA", "T"], "sp")
    assert sp.to_words([4, 5, 6]) == ["THE", "CAT"]


def test_vocabulary_errors_name_the_problem(tmp_path):
    vocab = Vocabulary.from_dict_file(_dict(tmp_path, "| 1\nA 1\n"), "ltr")
    with pytest.raises(W2vtkError, match="'Z'"):
        vocab.encode("A Z |")
    with pytest.raises(W2vtkError, match="line 2"):
        Vocabulary.from_dict_file(_dict(tmp_path, "A 1\nB\n"), "ltr")
    with pytest.raises(W2vtkError, match="twice"):
        Vocabulary.from_dict_file(_dict(tmp_path, "A 1\nA 2\n"), "ltr")
    with pytest.raises(W2vtkError, match="empty"):
        Vocabulary.from_dict_file(_dict(tmp_path, ""), "ltr")
    with pytest.raises(W2vtkError, match="no such dictionary"):
        Vocabulary.from_dict_file(tmp_path / "missing.txt", "ltr")
    with pytest.raises(W2vtkError, match="kind"):
        Vocabulary.from_list(SPECIAL_SYMBOLS + ["A"], "words")


def test_dictionary_written_by_prepare_loads(prepared_librispeech, prepared_timit):
    ltr = Vocabulary.from_dict_file(prepared_librispeech / "dict.ltr.txt", "ltr")
    for line in (prepared_librispeech / "train-clean-100.ltr").read_text().splitlines():
        assert ltr.tokens(ltr.encode(line)) == line.split()
    phn = Vocabulary.from_dict_file(prepared_timit / "dict.phn.txt", "phn")
    assert set(phn.symbols[4:]) <= set(PHONES_39)

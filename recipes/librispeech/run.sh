#!/usr/bin/env bash
# wav2vec 2.0 on LibriSpeech: corpus -> manifests -> 4-gram LM -> pretraining -> CTC fine-tuning ->
# decoding (greedy and with the 4-gram, LM weights tuned on a dev set) -> RESULTS.md.
#
# Usage: recipes/librispeech/run.sh [options]      (from any directory; outputs go under --data, --exp)
#   e.g. run.sh --corpus /corpora/LibriSpeech --lm /corpora/4-gram.arpa.gz --conf base --labelled 10h \
#               --librilight /corpora/librispeech_finetuning
#        run.sh --corpus synth --lm-text synth/lm-text.txt --conf tiny   (a `w2vtk synth librispeech` corpus)
#
# Stages (each ends by writing a .done marker in its output folder; a re-run skips finished stages,
# and redoes a stage whose settings or inputs changed; --force true redoes the selected stages):
#   0 download   LibriSpeech, the 4-gram and Libri-light from openslr/dl.fbaipublicfiles into DATA/download
#                (skipped with --corpus)
#   1 prepare    manifests in DATA/manifests: every subset found, plus train-all (all train-* subsets
#                together: 960 h on the full corpus) and, with --librilight, train-10m/1h/10h
#   2 lm         DATA/lm: the 4-gram (--lm) or one built from --lm-text, in KenLM's binary format, and
#                the letter lexicon of its words
#   3 pretrain   EXP/pretrain with pretrain_<conf>.yaml on train-all (skipped with --init)
#   4 finetune   EXP/finetune/pretrained from the pretrained model (or --init); on a synthesized corpus
#                also EXP/finetune/scratch, the same model trained from random weights, to show what
#                pretraining buys
#   5 decode     every dev-* and test-* subset: greedy, then with the LM after tuning its weight and
#                word score on the tuning subset, into EXP/decode/<model>/<subset>/{greedy,4gram}
#   6 results    training-curve plots in EXP/plots, EXP/RESULTS.md (a WER table, greedy and 4-gram
#                columns per model) and EXP/results.json
#
# Options (--name value or --name=value):
#   --stage N             first stage to run (default 0)
#   --stop-stage N        last stage to run (default 6)
#   --nj N                parallel jobs for preparation and decoding (default 2)
#   --conf NAME           tiny | base | large: pretrain_<conf>.yaml, and finetune_tiny.yaml for tiny or
#                         finetune_<labelled>.yaml otherwise, from recipes/librispeech/conf (default base)
#   --data DIR            data folder: download/, manifests/, lm/ (default data/librispeech)
#   --exp DIR             experiment folder (default exp/librispeech_<conf>, or exp/librispeech_<conf>_<labelled>)
#   --force BOOL          true: redo the selected stages even if done (default false)
#   --corpus DIR          LibriSpeech: the folder holding train-clean-100/, dev-clean/, ... (or their
#                         LibriSpeech/ parent); stage 0 is skipped when it is given
#   --mirror URL          where stage 0 downloads openslr's resources 11 and 12 from (default
#                         https://www.openslr.org/resources; mirrors: https://us.openslr.org/resources, ...)
#   --librilight DIR      the extracted librispeech_finetuning/ (needed for --labelled 10m, 1h, 10h)
#   --lm FILE             an n-gram LM, ARPA (.gz allowed) or KenLM binary, e.g. openslr's 4-gram.arpa.gz
#   --lm-words FILE       the words the decoder may output, for its lexicon (default: the --lm's unigrams,
#                         or the --lm-text's words); needed with a binary --lm, e.g. librispeech-vocab.txt
#   --lm-text FILE        text (one sentence per line, .gz allowed) to build a 4-gram from when no --lm
#   --labelled SET        labelled data for fine-tuning: 10m | 1h | 10h | 100h | 960h (default 100h)
#   --init CKPT           start fine-tuning from this checkpoint (a w2vtk pretraining checkpoint or one
#                         made by `w2vtk import`) and skip pretraining
#   --synthetic MODE      auto | true | false: also fine-tune from scratch. auto: when the corpus was made
#                         by `w2vtk synth` (its SPEAKERS.TXT names espeak-ng voices) (default auto)
#   --pretrain-updates N  pretraining updates (default: the config's optim.max_updates)
#   --finetune-updates N  fine-tuning updates (default: the config's)
#   --seed N              seed of pretraining and fine-tuning: initialisation, masks, batches (default 1)
#   --pretrain-args STR   extra `section.key=value` overrides for w2vtk pretrain, space-separated
#   --finetune-args STR   extra overrides for w2vtk finetune, e.g. "optim.update_freq=4"
#   --decoder NAME        LM beam search: flashlight (lexicon-based, the paper's) | pyctcdecode
#                         (default flashlight)
#   --beam N              beam size of the LM decoding (default 50)
#   --tune-subset NAME    subset the LM weights are tuned on (default: dev-other, else dev-clean)
#   --tune-trials N       LM weight / word score pairs tried when tuning (default 32)
#
# Environment: W2VTK, the w2vtk command (default: this repository's .venv/bin/w2vtk); W2VTK_PYTHON, the
# Python that has w2vtk installed, for local/*.py (default: .venv/bin/python).
# Multi-GPU or multi-machine pretraining: see recipes/README.md.
set -euo pipefail

stage=0
stop_stage=6
nj=2
conf=base
data=data/librispeech
exp=""
force=false
corpus=""
mirror=https://www.openslr.org/resources
librilight=""
lm=""
lm_words=""
lm_text=""
labelled=100h
init=""
synthetic=auto
pretrain_updates=""
finetune_updates=""
pretrain_args=""
finetune_args=""
decoder=flashlight
beam=50
tune_subset=""
tune_trials=32
seed=1
options=(stage stop_stage nj conf data exp force corpus mirror librilight lm lm_words lm_text labelled init synthetic seed
         pretrain_updates finetune_updates pretrain_args finetune_args decoder beam tune_subset tune_trials)

recipe=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$recipe/../../bin/common.sh"
parse_options "$@"

# ---------------------------------------------------------------- checks and derived settings
case $conf in tiny|base|large) ;; *) die "--conf $conf: choose tiny, base or large" ;; esac
case $labelled in 10m|1h|10h|100h|960h) ;; *) die "--labelled $labelled: choose 10m, 1h, 10h, 100h or 960h" ;; esac
case $synthetic in auto|true|false) ;; *) die "--synthetic $synthetic: choose auto, true or false" ;; esac
case $decoder in pyctcdecode|flashlight) ;; *) die "--decoder $decoder: choose pyctcdecode or flashlight" ;; esac
[[ $seed =~ ^[0-9]+$ ]] || die "--seed $seed: give a whole number"
for n in pretrain_updates finetune_updates; do
  [[ -z ${!n} || ${!n} =~ ^[1-9][0-9]*$ ]] || die "--${n//_/-} ${!n}: give a positive number of updates"
done
if [ -z "$exp" ]; then
  if [ "$conf" = tiny ]; then exp=exp/librispeech_tiny; else exp=exp/librispeech_${conf}_$labelled; fi
fi
[ -z "$init" ] || [ -f "$init" ] || die "--init $init: no such file"
[ -z "$lm" ] || [ -f "$lm" ] || die "--lm $lm: no such file"
[ -z "$lm_text" ] || [ -f "$lm_text" ] || die "--lm-text $lm_text: no such file"
[ -z "$lm_words" ] || [ -f "$lm_words" ] || die "--lm-words $lm_words: no such file"
is_binary_lm() { [ "$(head -c 8 "$1")" = "mmap lm " ]; }  # KenLM's binary files start so

manifests=$data/manifests
lm_dir=$data/lm
download=$data/download
pretrain_conf=$recipe/conf/pretrain_$conf.yaml
if [ "$conf" = tiny ]; then finetune_conf=$recipe/conf/finetune_tiny.yaml; else finetune_conf=$recipe/conf/finetune_$labelled.yaml; fi
read -ra pretrain_overrides <<< "$pretrain_args"
read -ra finetune_overrides <<< "$finetune_args"

# Where the corpus and the LM come from when stage 0 downloaded them.
[ -n "$corpus" ] || corpus=$download
if [ -z "$lm" ] && [ -z "$lm_text" ] && [ "$corpus" = "$download" ]; then lm=$download/4-gram.arpa.gz; fi
if [[ $labelled =~ ^(10m|1h|10h)$ ]] && [ -z "$librilight" ]; then
  if [ "$corpus" = "$download" ]; then librilight=$download/librispeech_finetuning
  elif stage_selected 1; then die "--labelled $labelled needs Libri-light's splits: pass --librilight DIR"; fi
fi

corpus_root() {  # the folder holding the subset folders
  if [ -d "$corpus/LibriSpeech" ]; then echo "$corpus/LibriSpeech"; else echo "$corpus"; fi
}
if [ "$synthetic" = auto ]; then
  if grep -qs 'espeak-ng' "$(corpus_root)/SPEAKERS.TXT"; then synthetic=true; else synthetic=false; fi
fi
models=(pretrained)
[ "$synthetic" = false ] || models+=(scratch)
log "experiment $exp, data $data, conf $conf, labelled $labelled, models: ${models[*]}"

subset_exists() { [ -f "$manifests/$1.tsv" ]; }

# The subset for validation during training, and for tuning the LM weights: dev-other, as in the paper.
valid_subset() {
  if subset_exists dev-other; then echo dev-other; else echo dev-clean; fi
}

# ---------------------------------------------------------------- 0: download
if stage_selected 0; then
  if [ "$corpus" != "$download" ]; then
    log "Stage 0: download: skipped, using --corpus $corpus"
  else
    sig="subsets=all"$'\n'"labelled=$labelled"
    if begin_stage 0 "download LibriSpeech from $mirror" "$download" "$sig" resumable; then
      if ! curl -sfI --max-time 20 "$mirror/12/" >/dev/null 2>&1; then
        die "$mirror cannot be reached from this machine. Download LibriSpeech (https://www.openslr.org/12)" \
            "and the 4-gram (https://www.openslr.org/11) elsewhere, then pass --corpus DIR (the folder holding" \
            "train-clean-100/, dev-clean/, ...) and --lm 4-gram.arpa.gz (or --lm-text FILE)"
      fi
      fetch() {  # URL: download (resuming a partial file) and keep it under DATA/download
        local url=$1 out=$download/$(basename "$1")
        [ -f "$out" ] || { run curl -fL -C - --retry 3 -o "$out.partial" "$url" && mv "$out.partial" "$out"; }
      }
      for subset in train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other; do
        if [ ! -d "$download/LibriSpeech/$subset" ]; then
          fetch "$mirror/12/$subset.tar.gz"
          run tar -xzf "$download/$subset.tar.gz" -C "$download"
          rm -f "$download/$subset.tar.gz"
        fi
      done
      fetch "$mirror/11/4-gram.arpa.gz"
      if [[ $labelled =~ ^(10m|1h|10h)$ ]] && [ ! -d "$download/librispeech_finetuning" ]; then
        fetch https://dl.fbaipublicfiles.com/librilight/data/librispeech_finetuning.tgz
        run tar -xzf "$download/librispeech_finetuning.tgz" -C "$download"
        rm -f "$download/librispeech_finetuning.tgz"
      fi
      need_files "$download/4-gram.arpa.gz"
      [ -d "$download/LibriSpeech/dev-clean" ] || die "$download/LibriSpeech/dev-clean is missing after the download"
      end_stage "$download"
    fi
  fi
fi

# ---------------------------------------------------------------- 1: prepare
sig="corpus=$(abspath "$corpus")"$'\n'"librilight=${librilight:+$(abspath "$librilight")}"
if begin_stage 1 "prepare manifests" "$manifests" "$sig"; then
  [ -d "$corpus" ] || die "--corpus $corpus: no such folder"
  w2vtk prepare librispeech "$corpus" "$manifests" --jobs "$nj"
  train_sets=()
  for s in train-clean-100 train-clean-360 train-other-500; do
    subset_exists "$s" && train_sets+=("$s")
  done
  [ ${#train_sets[@]} -gt 0 ] || die "$corpus holds no train-clean-100, train-clean-360 or train-other-500"
  run "$W2VTK_PYTHON" "$recipe/local/combine_subsets.py" "$manifests" train-all "${train_sets[@]}"
  if [ -n "$librilight" ]; then
    # A folder of its own: its dict.ltr.txt would replace LibriSpeech's.
    w2vtk prepare librilight "$librilight" "$manifests/librilight" --jobs "$nj"
    for s in train-10m train-1h train-10h; do  # those whose folders --librilight holds
      [ ! -f "$manifests/librilight/$s.tsv" ] || cp "$manifests/librilight/$s".{tsv,ltr,wrd} "$manifests/"
    done
    rm -rf "$manifests/librilight"
  fi
  need_files "$manifests/dict.ltr.txt" "$manifests/train-all.tsv" "$manifests/train-all.ltr"
  ls "$manifests"/dev-*.tsv >/dev/null 2>&1 || die "$corpus holds no dev-* subset (needed for validation)"
  end_stage "$manifests"
fi

# The labelled training subset, from what stage 1 prepared.
case $labelled in
  10m|1h|10h) labelled_subset=train-$labelled ;;
  100h) labelled_subset=train-clean-100 ;;
  960h) labelled_subset=train-all ;;
esac
if [ "$labelled" = 960h ] && [ -d "$manifests" ] && ! { subset_exists train-clean-360 && subset_exists train-other-500; }; then
  die "--labelled 960h needs train-clean-100, train-clean-360 and train-other-500 in --corpus"
fi

# ---------------------------------------------------------------- 2: LM
lm_bin=$lm_dir/lm.bin
lexicon=$lm_dir/lexicon.txt
if stage_selected 2 && [ -z "$lm" ] && [ -z "$lm_text" ]; then
  die "stage 2 needs an LM: --lm FILE (e.g. 4-gram.arpa.gz from https://www.openslr.org/11) or --lm-text FILE"
fi
sig="lm=${lm:+$(abspath "$lm")}"$'\n'"lm_text=${lm_text:+$(abspath "$lm_text")}"
sig+=$'\n'"lm_words=${lm_words:+$(abspath "$lm_words")}"
if begin_stage 2 "n-gram LM and lexicon" "$lm_dir" "$sig"; then
  if [ -n "$lm" ]; then
    if is_binary_lm "$lm"; then
      [ -n "$lm_words" ] || die "--lm $lm is a KenLM binary, whose words cannot be listed: pass" \
        "--lm-words FILE (e.g. librispeech-vocab.txt from https://www.openslr.org/11) for the lexicon"
      run cp "$lm" "$lm_bin"
    else
      w2vtk lm binary "$lm" "$lm_bin"
    fi
    w2vtk lm lexicon "${lm_words:-$lm}" "$lexicon"
  else
    w2vtk lm train --order 4 "$lm_text" "$lm_dir/4gram.arpa" --binary "$lm_bin"
    w2vtk lm lexicon "${lm_words:-$lm_dir/4gram.arpa}" "$lexicon"
  fi
  need_files "$lm_bin" "$lexicon"
  end_stage "$lm_dir"
fi

# ---------------------------------------------------------------- 3: pretrain
pretrain_dir=$exp/pretrain
pretrain_stage 3 train-all "$(valid_subset)" train-all

# ---------------------------------------------------------------- 4: fine-tune
finetune_dir=$exp/finetune
if stage_selected 4; then
  need_done "$manifests" "stage 1's manifests"
  [ -n "$init" ] || need_done "$pretrain_dir" "stage 3's pretrained model"
  subset_exists "$labelled_subset" || die "$manifests/$labelled_subset.tsv is missing: --labelled $labelled" \
    "needs it (Libri-light's splits come with --librilight; redo stage 1 with --force true)"
fi
sig="conf=$(file_id "$finetune_conf")"$'\n'"labelled=$labelled_subset"$'\n'"models=${models[*]}"$'\n'"updates=$finetune_updates"
sig+=$'\n'"args=$finetune_args"$'\n'"seed=$seed"$'\n'"$init_id"$'\n'"data=$(stamp "$manifests")"
if begin_stage 4 "fine-tune on $labelled_subset (${models[*]})" "$finetune_dir" "$sig" resumable; then
  for model in "${models[@]}"; do
    from=()
    if [ "$model" = pretrained ]; then
      from=(--init "$init_ckpt")
    else
      from=(task.feature_grad_mult=1.0)  # from random weights the CNN must learn too
    fi
    w2vtk --seed "$seed" finetune --config "$finetune_conf" --data "$manifests" --train-subset "$labelled_subset" \
      --valid-subset "$(valid_subset)" --labels ltr --exp-dir "$finetune_dir/$model" \
      ${finetune_updates:+--max-updates "$finetune_updates"} "${from[@]}" \
      ${finetune_overrides[@]+"${finetune_overrides[@]}"}
    need_files "$finetune_dir/$model/checkpoints/best.pt" "$finetune_dir/$model/log.jsonl"
  done
  end_stage "$finetune_dir"
fi

# ---------------------------------------------------------------- 5: decode
decode_dir=$exp/decode
if stage_selected 5; then
  need_done "$manifests" "stage 1's manifests"
  need_done "$lm_dir" "stage 2's LM"
  need_done "$finetune_dir" "stage 4's fine-tuned models"
fi
[ -n "$tune_subset" ] || tune_subset=$(valid_subset)
sig="decoder=$decoder"$'\n'"beam=$beam"$'\n'"tune=$tune_subset $tune_trials"$'\n'"lm=$(stamp "$lm_dir")"
sig+=$'\n'"models=$(stamp "$finetune_dir")"$'\n'"data=$(stamp "$manifests")"
if begin_stage 5 "decode (greedy, and $decoder with the LM tuned on $tune_subset)" "$decode_dir" "$sig" resumable; then
  eval_subsets=()
  for tsv in "$manifests"/dev-*.tsv "$manifests"/test-*.tsv; do
    [ -f "$tsv" ] && eval_subsets+=("$(basename "$tsv" .tsv)")
  done
  subset_exists "$tune_subset" || die "--tune-subset $tune_subset: $manifests/$tune_subset.tsv does not exist"
  lm_options=(--decoder "$decoder" --lm "$lm_bin" --lexicon "$lexicon" --beam "$beam")
  tune_options=(--trials "$tune_trials")
  for model in "${models[@]}"; do
    decode_model "$finetune_dir/$model/checkpoints/best.pt" "$manifests" "$decode_dir/$model" 4gram \
      "$tune_subset" "${eval_subsets[@]}"
  done
  end_stage "$decode_dir"
fi

# ---------------------------------------------------------------- 6: results
plots=$exp/plots
stage_selected 6 && need_done "$decode_dir" "stage 5's decodings"
sig="decode=$(stamp "$decode_dir")"$'\n'"models=$(stamp "$finetune_dir")"
if begin_stage 6 "plots and RESULTS.md" "$plots" "$sig"; then
  [ -n "$init" ] || w2vtk plot "$pretrain_dir" --out "$plots/pretrain.png" --title "pretraining ($conf)"
  ft_dirs=() ft_names=()
  for model in "${models[@]}"; do
    ft_dirs+=("$finetune_dir/$model"); ft_names+=(--name "$model")
  done
  w2vtk plot "${ft_dirs[@]}" "${ft_names[@]}" --out "$plots/finetune.png" \
    --title "fine-tuning on $labelled_subset ($conf)"
  {
    echo "Corpus: \`$corpus\`$([ "$synthetic" = true ] && echo ' (synthesized)'). Model: \`$conf\`, fine-tuned on $labelled_subset"
    echo "(models: ${models[*]}; \`scratch\` starts from random weights, \`pretrained\` from"
    echo "${init:-the stage 3 pretraining}). LM: ${lm:-4-gram built from $lm_text}."
  } > "$plots/notes.md"
  w2vtk results "$exp" --title "LibriSpeech, wav2vec 2.0 $conf" --notes "$plots/notes.md" >/dev/null
  need_files "$exp/RESULTS.md" "$exp/results.json" "$plots/finetune.png"
  end_stage "$plots"
fi

if [ -f "$exp/RESULTS.md" ] && stage_selected 6; then
  log "results in $exp/RESULTS.md:"
  cat "$exp/RESULTS.md"
fi
log "done"

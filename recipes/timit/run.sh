#!/usr/bin/env bash
# wav2vec 2.0 on TIMIT phone recognition: corpus -> 39-phone manifests -> phone n-gram LM -> pretraining
# on TIMIT's own audio (or --init a pretrained model) -> CTC fine-tuning on phones -> decoding (greedy and
# with the phone LM, its weight tuned on dev) -> PER in RESULTS.md.
#
# Usage: recipes/timit/run.sh --timit DIR [options]    (from any directory; outputs go under --data, --exp)
#   e.g. run.sh --timit /corpora/timit --init exp/librispeech_large_960h/pretrain/checkpoints/best.pt \
#               --conf large         (the paper: LARGE pretrained on LibriSpeech 960 h, PER 7.4 / 8.3)
#        run.sh --timit synth --conf tiny       (a `w2vtk synth timit` corpus, pretraining on its audio)
#
# Stages (each ends by writing a .done marker in its output folder; a re-run skips finished stages,
# and redoes a stage whose settings or inputs changed; --force true redoes the selected stages):
#   0 corpus     TIMIT is licensed by the LDC (LDC93S1) and cannot be downloaded: checks --timit
#   1 prepare    DATA/manifests: train (3696 utterances), dev (50 speakers), core test (24 speakers),
#                SA sentences left out, labels folded to the 39 scoring phones (sil kept)
#   2 lm         DATA/lm: a phone n-gram (order --lm-order) of the train transcripts
#   3 pretrain   EXP/pretrain with recipes/librispeech/conf/pretrain_<conf>.yaml on TIMIT's train audio
#                (skipped with --init)
#   4 finetune   EXP/finetune/pretrained: phone CTC from the pretrained model (or --init) with
#                conf/finetune_timit.yaml (finetune_timit_tiny.yaml for --conf tiny)
#   5 decode     dev and test: greedy, then with the phone LM after tuning its weight on dev, into
#                EXP/decode/pretrained/<subset>/{greedy,phone-lm}
#   6 results    EXP/plots, EXP/RESULTS.md (a PER table) and EXP/results.json
#
# Options (--name value or --name=value):
#   --stage N             first stage to run (default 0)
#   --stop-stage N        last stage to run (default 6)
#   --nj N                parallel jobs for preparation and decoding (default 2)
#   --conf NAME           tiny | base | large: the pretraining config and the fine-tuning one (tiny:
#                         finetune_timit_tiny.yaml; base, large: finetune_timit.yaml) (default base)
#   --data DIR            data folder: manifests/, lm/ (default data/timit)
#   --exp DIR             experiment folder (default exp/timit_<conf>)
#   --force BOOL          true: redo the selected stages even if done (default false)
#   --timit DIR           the TIMIT corpus: the folder holding TRAIN/ and TEST/ (either case), or its parent
#   --init CKPT           start fine-tuning from this checkpoint (e.g. a LibriSpeech pretraining, or one
#                         made by `w2vtk import`) and skip pretraining
#   --pretrain-updates N  pretraining updates (default: the config's optim.max_updates)
#   --finetune-updates N  fine-tuning updates (default: the config's)
#   --pretrain-args STR   extra `section.key=value` overrides for w2vtk pretrain, space-separated
#   --finetune-args STR   extra overrides for w2vtk finetune
#   --lm-order N          order of the phone n-gram (default 4)
#   --beam N              beam size of the LM decoding (default 50)
#   --tune-trials N       LM weight / word score pairs tried on dev (default 32)
#
# Environment: W2VTK, the w2vtk command (default: this repository's .venv/bin/w2vtk); W2VTK_PYTHON, the
# Python that has w2vtk installed (default: .venv/bin/python).
set -euo pipefail

stage=0
stop_stage=6
nj=2
conf=base
data=data/timit
exp=""
force=false
timit=""
init=""
pretrain_updates=""
finetune_updates=""
pretrain_args=""
finetune_args=""
lm_order=4
beam=50
tune_trials=32
options=(stage stop_stage nj conf data exp force timit init pretrain_updates finetune_updates pretrain_args
         finetune_args lm_order beam tune_trials)

recipe=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$recipe/../../bin/common.sh"
parse_options "$@"

# ---------------------------------------------------------------- checks and derived settings
case $conf in tiny|base|large) ;; *) die "--conf $conf: choose tiny, base or large" ;; esac
for n in pretrain_updates finetune_updates; do
  [[ -z ${!n} || ${!n} =~ ^[1-9][0-9]*$ ]] || die "--${n//_/-} ${!n}: give a positive number of updates"
done
[[ $lm_order -ge 2 && $lm_order -le 6 ]] || die "--lm-order $lm_order: KenLM supports orders 2 to 6"
[ -n "$exp" ] || exp=exp/timit_$conf
[ -z "$init" ] || [ -f "$init" ] || die "--init $init: no such file"

manifests=$data/manifests
lm_dir=$data/lm
pretrain_conf=$recipe/../librispeech/conf/pretrain_$conf.yaml
if [ "$conf" = tiny ]; then finetune_conf=$recipe/conf/finetune_timit_tiny.yaml; else finetune_conf=$recipe/conf/finetune_timit.yaml; fi
read -ra pretrain_overrides <<< "$pretrain_args"
read -ra finetune_overrides <<< "$finetune_args"
log "experiment $exp, data $data, conf $conf"

# ---------------------------------------------------------------- 0: corpus
if stage_selected 0; then
  [ -n "$timit" ] || die "TIMIT is distributed by the LDC (catalog LDC93S1) and cannot be downloaded here:" \
    "pass --timit DIR, the folder holding TRAIN/ and TEST/"
  log "Stage 0: corpus: using --timit $timit"
fi

# ---------------------------------------------------------------- 1: prepare
sig="timit=${timit:+$(abspath "$timit")}"$'\n'"phones=39"
if begin_stage 1 "prepare manifests (39 phones)" "$manifests" "$sig"; then
  [ -n "$timit" ] || die "stage 1 needs --timit DIR (the folder holding TRAIN/ and TEST/)"
  [ -d "$timit" ] || die "--timit $timit: no such folder"
  w2vtk prepare timit "$timit" "$manifests" --phones 39 --jobs "$nj"
  for s in train dev test; do
    need_files "$manifests/$s.tsv" "$manifests/$s.phn"
  done
  need_files "$manifests/dict.phn.txt"
  end_stage "$manifests"
fi

# ---------------------------------------------------------------- 2: phone LM
phone_lm=$lm_dir/phone.arpa
stage_selected 2 && need_done "$manifests" "stage 1's manifests"
sig="order=$lm_order"$'\n'"data=$(stamp "$manifests")"
if begin_stage 2 "phone $lm_order-gram of the train transcripts" "$lm_dir" "$sig"; then
  # Phones are the LM's words, kept as they are (lower case, `sil` included). The model is small, so it
  # stays in ARPA form, from which pyctcdecode also reads its word list.
  w2vtk lm train --order "$lm_order" --no-normalize "$manifests/train.phn" "$phone_lm"
  need_files "$phone_lm"
  end_stage "$lm_dir"
fi

# ---------------------------------------------------------------- 3: pretrain
pretrain_dir=$exp/pretrain
pretrain_stage 3 train dev "TIMIT's train audio"

# ---------------------------------------------------------------- 4: fine-tune
finetune_dir=$exp/finetune
if stage_selected 4; then
  need_done "$manifests" "stage 1's manifests"
  [ -n "$init" ] || need_done "$pretrain_dir" "stage 3's pretrained model"
fi
sig="conf=$(file_id "$finetune_conf")"$'\n'"updates=$finetune_updates"$'\n'"args=$finetune_args"$'\n'"$init_id"
sig+=$'\n'"data=$(stamp "$manifests")"
if begin_stage 4 "fine-tune on phones" "$finetune_dir" "$sig" resumable; then
  w2vtk finetune --config "$finetune_conf" --data "$manifests" --train-subset train --valid-subset dev \
    --labels phn --init "$init_ckpt" --exp-dir "$finetune_dir/pretrained" \
    ${finetune_updates:+--max-updates "$finetune_updates"} ${finetune_overrides[@]+"${finetune_overrides[@]}"}
  need_files "$finetune_dir/pretrained/checkpoints/best.pt" "$finetune_dir/pretrained/log.jsonl"
  end_stage "$finetune_dir"
fi

# ---------------------------------------------------------------- 5: decode
decode_dir=$exp/decode
if stage_selected 5; then
  need_done "$lm_dir" "stage 2's phone LM"
  need_done "$finetune_dir" "stage 4's fine-tuned model"
fi
sig="beam=$beam"$'\n'"trials=$tune_trials"$'\n'"lm=$(stamp "$lm_dir")"$'\n'"model=$(stamp "$finetune_dir")"
if begin_stage 5 "decode dev and test (greedy, and with the phone LM tuned on dev)" "$decode_dir" "$sig" resumable; then
  # pyctcdecode: lexicon-free, every phone a word of the phone LM.
  lm_options=(--decoder pyctcdecode --lm "$phone_lm" --beam "$beam")
  tune_options=(--trials "$tune_trials")
  decode_model "$finetune_dir/pretrained/checkpoints/best.pt" "$manifests" "$decode_dir/pretrained" phone-lm \
    dev dev test
  end_stage "$decode_dir"
fi

# ---------------------------------------------------------------- 6: results
plots=$exp/plots
stage_selected 6 && need_done "$decode_dir" "stage 5's decodings"
sig="decode=$(stamp "$decode_dir")"
if begin_stage 6 "plots and RESULTS.md" "$plots" "$sig"; then
  [ -n "$init" ] || w2vtk plot "$pretrain_dir" --out "$plots/pretrain.png" --title "pretraining on TIMIT ($conf)"
  w2vtk plot "$finetune_dir/pretrained" --out "$plots/finetune.png" --title "phone fine-tuning ($conf)"
  {
    echo "Corpus: \`$timit\` (39 phones, \`sil\` counted). Model: \`$conf\`, fine-tuned from"
    echo "${init:-a pretraining on the TIMIT train audio (stage 3)}. LM: phone $lm_order-gram of the train transcripts."
    echo "The paper (LARGE, LibriSpeech 960 h pretraining, no LM): PER 7.4 dev / 8.3 test."
  } > "$plots/notes.md"
  w2vtk results "$exp" --title "TIMIT phone recognition, wav2vec 2.0 $conf" --notes "$plots/notes.md" >/dev/null
  need_files "$exp/RESULTS.md" "$exp/results.json" "$plots/finetune.png"
  end_stage "$plots"
fi

if [ -f "$exp/RESULTS.md" ] && stage_selected 6; then
  log "results in $exp/RESULTS.md:"
  cat "$exp/RESULTS.md"
fi
log "done"

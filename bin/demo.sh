#!/usr/bin/env bash
# The whole pipeline in minutes on a CPU (what `make demo` runs, after bin/setup.sh): synthesize a small
# LibriSpeech-format corpus with espeak-ng, then run recipes/librispeech/run.sh end to end with the tiny
# model (pretraining, fine-tuning from scratch and from the pretrained model, greedy and 4-gram
# decoding) and print its results table.
#
# As in the paper's low-resource setting, only part of the audio is labelled: pretraining sees all of
# train-clean-100, fine-tuning only a Libri-light-style 10-minute split of it (--labelled 10m). With so
# few labels the pretrained model ends ahead of the same model trained from scratch; with all 30
# minutes labelled the two end level at this budget.
#
# Usage: bin/demo.sh [options]          (outputs: data/demo/ and exp/demo/ under --work; to run
#        single stages, call recipes/librispeech/run.sh with the options this script passes it)
#
# Options (--name value or --name=value); the corpus size and update counts are tuned here:
#   --train-minutes M     minutes of synthesized train-clean-100 audio, all for pretraining (default 30)
#   --labelled-minutes M  minutes of it in the labelled split, librispeech_finetuning/1h/0 (default 10)
#   --eval-minutes M      minutes in each of dev-clean and test-clean (default 5)
#   --speakers N          train-clean-100 speakers (default 8)
#   --pretrain-updates N  pretraining updates of the tiny model (default 800)
#   --finetune-updates N  fine-tuning updates, for each of the two models (default 800)
#   --nj N                parallel jobs for synthesis, preparation and decoding (default 2)
#   --work DIR            folder for data/demo/ and exp/demo/ (default: the repository)
#   --force BOOL          true: synthesize again and redo every recipe stage (default false)
#
# A second run skips the finished work and prints the table again in seconds.
set -euo pipefail

train_minutes=30.0
labelled_minutes=10.0
eval_minutes=5.0
speakers=8
pretrain_updates=800
finetune_updates=800
nj=2
work=""
force=false
options=(train_minutes labelled_minutes eval_minutes speakers pretrain_updates finetune_updates nj work force)

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_options "$@"
stage=0 stop_stage=0  # for begin_stage: synthesis is this script's one stage of its own

mkdir -p "${work:=$W2VTK_ROOT}"
cd "$work"
corpus=data/demo/corpus
sig="train_minutes=$train_minutes"$'\n'"labelled_minutes=$labelled_minutes"$'\n'"eval_minutes=$eval_minutes"$'\n'"speakers=$speakers"
if begin_stage 0 "synthesize a LibriSpeech-format corpus" "$corpus" "$sig"; then
  w2vtk synth librispeech "$corpus" --train-minutes "$train_minutes" \
    --librilight-minutes "$labelled_minutes" --dev-minutes "$eval_minutes" \
    --test-minutes "$eval_minutes" --speakers "$speakers" --jobs "$nj"
  need_files "$corpus/lm-text.txt" "$corpus/LibriSpeech/SPEAKERS.TXT"
  end_stage "$corpus"
fi

# The recipe's stage 0 (download) is skipped: the corpus is given.
bash "$W2VTK_ROOT/recipes/librispeech/run.sh" --conf tiny --synthetic true --corpus "$corpus" \
  --librilight "$corpus/librispeech_finetuning" --labelled 10m \
  --lm-text "$corpus/lm-text.txt" --data data/demo --exp exp/demo --nj "$nj" --force "$force" \
  --pretrain-updates "$pretrain_updates" --finetune-updates "$finetune_updates"

log "results: $PWD/exp/demo/RESULTS.md (training curves in exp/demo/plots/)"

#!/usr/bin/env bash
# A short check of w2vtk on a machine with a CUDA GPU (the CUDA path is the plain reference model).
#   bash bench/gpu_check.sh [OUT_DIR]      (default: exp/gpu_check; about 10-20 minutes)
# 1. the model, pretraining and fine-tuning tests on the GPU (W2VTK_TEST_DEVICE=cuda; the training
#    commands take the GPU by themselves, trainer.device=auto);
# 2. 50 BASE pretraining updates under torchrun --nproc-per-node 1 (nccl), in bf16, then in fp16
#    with the GradScaler;
# 3. 20 fine-tuning updates from that checkpoint, and a greedy decode;
# 4. one BASE pretraining update timed against transformers' on the same GPU (bench/gpu_step.py).
# Needs only torch, torchaudio, transformers, soundfile and w2vtk. Writes OUT_DIR/gpu_check.log and
# OUT_DIR/gpu_step.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-exp/gpu_check}
python=${PYTHON:-python}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
log() { echo "$(date '+%H:%M:%S') $*"; }
w2vtk() { "$python" -m w2vtk "$@"; }

log "Stage 0: the machine"
"$python" - <<'PY'
import torch, transformers
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print("torch", torch.__version__, "transformers", transformers.__version__, "CUDA", torch.version.cuda)
print("device", torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY

log "Stage 1: model, pretraining and fine-tuning tests on the GPU"
# two-process tests need two GPUs for nccl; the corpus fixtures skip where espeak-ng is missing
W2VTK_TEST_DEVICE=cuda "$python" -m pytest -p no:cacheprovider -q -x tests/test_model.py tests/test_pretraining.py \
    tests/test_finetuning.py -k "not two_process"

log "Stage 2: a small labelled corpus (tones and noise)"
data=$out/data
"$python" bench/gpu_data.py "$data" --files 64

pretrain() {  # precision, exp dir
    "$python" -m torch.distributed.run --standalone --nproc-per-node 1 -m w2vtk pretrain \
        --config recipes/librispeech/conf/pretrain_base.yaml --data "$data" --train-subset train \
        --valid-subset valid --exp-dir "$2" --max-updates 50 --save-interval 50 --valid-interval 50 \
        --log-interval 10 trainer.precision="$1" data.max_tokens=1400000 data.num_workers=4 \
        data.min_sample_size=32000 optim.warmup_updates=10
}
log "Stage 3: 50 BASE pretraining updates, torchrun with nccl, bf16"
pretrain bf16 "$out/pretrain_bf16"
log "Stage 3: 50 BASE pretraining updates, torchrun with nccl, fp16 with the GradScaler"
pretrain fp16 "$out/pretrain_fp16"
"$python" - "$out" <<'PY'
import json, math, sys
for precision in ("bf16", "fp16"):
    lines = [json.loads(l) for l in open(f"{sys.argv[1]}/pretrain_{precision}/log.jsonl")]
    train = [l for l in lines if not l.get("valid")]
    assert train and train[-1]["step"] == 50, precision
    assert all(math.isfinite(l["loss"]) for l in train), precision
    print(precision, "loss", [round(l["loss"], 3) for l in train],
          "audio s/s", round(train[-1]["audio_seconds_per_second"], 1))
PY

log "Stage 4: 20 fine-tuning updates and a greedy decode"
w2vtk finetune --config recipes/librispeech/conf/finetune_10m.yaml --labels ltr \
    --init "$out/pretrain_bf16/checkpoints/last.pt" --data "$data" --train-subset train --valid-subset valid \
    --exp-dir "$out/finetune" --max-updates 20 --save-interval 20 --valid-interval 20 --log-interval 5 \
    task.freeze_finetune_updates=10 trainer.precision=bf16 data.max_tokens=1400000
w2vtk decode --checkpoint "$out/finetune/checkpoints/last.pt" --data "$data" --subset valid \
    --out "$out/decode" --decoder greedy
cat "$out/decode/wer.json"

log "Stage 5: one BASE pretraining update, ours against transformers' (bf16, same GPU)"
"$python" bench/gpu_step.py --reps 10 --warmup 3 --json "$out/gpu_step.json"
log "done: $out/gpu_check.log"

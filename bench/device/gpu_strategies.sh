#!/bin/bash
# GPU check for the trainer strategies (run through the session's device tool): images/s of
# `dynconv train` end to end, single process vs DeepSpeed ZeRO-2 (1 rank), bf16 + channels_last.
# Needs the wheels in .whl/ (pydantic, omegaconf, deepspeed and its deps) where the machine lacks them.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
[ -d .whl ] && pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v "^WARNING" | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1
D="python -m dynconv.launch"
$D data synth /tmp/d96 --classes 10 --train-per-class 400 --val-per-class 30 --size 96 >/dev/null
$D data synth /tmp/d128 --classes 10 --train-per-class 400 --val-per-class 30 --size 128 >/dev/null
run() {  # name data size model extra...
  local name=$1 data=$2 size=$3 model=$4; shift 4
  local t0=$SECONDS
  $D train --config launch/configs/demo.yaml data.train=$data/train data.val=$data/val data.image_size=$size \
    model.name=$model model.num_classes=10 train.epochs=3 train.batch_size=256 data.num_workers=14 \
    train.precision=bf16 train.channels_last=true tracking.enabled=false eval.subsets=RGB \
    run.dir=/tmp/runs/$name "$@" > /tmp/$name.log 2>&1
  local rc=$?
  local e3=$(grep -o "epoch 3/3.*epoch_time_s [0-9.]*" /tmp/$name.log | grep -o "epoch_time_s [0-9.]*" | cut -d' ' -f2)
  printf "%-34s rc=%s epoch3 %ss  ~%s img/s  wall %ss\n" "$name" "$rc" "$e3" \
    "$(python -c "print(round(4000/float('${e3:-0}' or 'nan')))" 2>/dev/null)" "$((SECONDS - t0))"
  [ $rc -eq 0 ] || tail -5 /tmp/$name.log
}
run r18_96_single   /tmp/d96 96 dynamic_resnet18 train.strategy=single
run r18_96_ds_zero2 /tmp/d96 96 dynamic_resnet18 train.strategy=deepspeed deepspeed.zero_stage=2
run r34_224_single  /tmp/d128 224 resnet34 dropout.kind=none model.norm=shared model.stem_mode=null train.strategy=single
run r34_224_ds_zero2 /tmp/d128 224 resnet34 dropout.kind=none model.norm=shared model.stem_mode=null train.strategy=deepspeed deepspeed.zero_stage=2
grep -h "deepspeed\|ZeRO" /tmp/r18_96_ds_zero2.log | head -3

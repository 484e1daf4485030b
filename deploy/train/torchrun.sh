#!/usr/bin/env bash
# Multi-node, multi-GPU CTVIS training with torchrun (elastic rendezvous, c10d backend).
# Run the same command on every node; node 0's address is the rendezvous point.
#
#   CONFIG=training/configs/ytvis19_r50.yaml OUT=runs/ytvis19_r50 \
#   NNODES=2 NPROC_PER_NODE=8 MASTER_ADDR=node0.cluster MASTER_PORT=29500 \
#     bash deploy/train/torchrun.sh [more `ctvis train` flags: --set optim.lr=3e-4 --resume]
#
# OUT must be one directory on a filesystem shared by all nodes (NFS, Lustre, GPFS, ...), at
# the same path on every node: rank 0 writes checkpoints that the other ranks read back and
# every rank writes its RNG state into them. `ctvis train` checks this at start (rank 0 writes
# a marker under OUT that every rank must see) and stops with an error naming OUT otherwise.
# SIGTERM to torchrun reaches every worker, which checkpoints its iteration and exits
# (torchrun kills workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT = 30 s later); rerun with --resume.
#
# Single node: NNODES=1 and MASTER_ADDR=127.0.0.1 (the defaults). torchrun sets RANK,
# LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for each process of `ctvis train`.
# In the container image (entrypoint `ctvis`), with the repository mounted for its configs:
#   docker run --gpus all --network host --ipc host --user "$(id -u):$(id -g)" \
#     -v "$PWD:/work" -w /work \
#     -e CONFIG=... -e OUT=runs/ytvis19_r50 --entrypoint bash ctvis-serve:gpu deploy/train/torchrun.sh
set -euo pipefail

CONFIG="${CONFIG:?set CONFIG to a training config file (training/configs/...)}"
OUT="${OUT:?set OUT to the run directory (checkpoints and logs go there)}"
NNODES="${NNODES:-1}"
NPROC_PER_NODE="${NPROC_PER_NODE:-gpu}"   # `gpu`: one process per visible GPU
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
RUN_ID="${RUN_ID:-ctvis-$(basename "$OUT")}"
TORCHRUN="${TORCHRUN:-torchrun}"
# NCCL reports the cause of a hang instead of waiting forever.
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

# `-m cli` is the `ctvis` command (cli/__main__.py): torchrun starts Python processes itself.
exec "$TORCHRUN" \
  --nnodes="$NNODES" \
  --nproc-per-node="$NPROC_PER_NODE" \
  --rdzv-backend=c10d \
  --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \
  --rdzv-id="$RUN_ID" \
  --max-restarts="${MAX_RESTARTS:-0}" \
  -m cli train --config "$CONFIG" --out "$OUT" "$@"

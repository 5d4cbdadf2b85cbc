"""Train the tiny config a few steps under one strategy and record what the parity tests compare.

One process (the reference):  python dist_parity.py --strategy dp1 --out DIR
Several:  python -m paddle.distributed.launch --nproc_per_node N --log_dir LOGS dist_parity.py --strategy dp2mp2pp2 --out DIR

Writes DIR/losses.json (rank 0: per-step loss and gradient norm, as every rank saw them), DIR/losses.jsonl
(rank 0's records, the format of llama_model.compare_losses) and
DIR/ckpt (dist.save_state_dict of the final parameters under full-model names, prefix "model.").
With --load CKPT it instead loads CKPT into this layout and writes DIR/loaded.npz with every
parameter gathered whole (on rank 0).
"""

import argparse
import json
import os

import numpy as np
import paddle
import paddle.distributed as dist

from llama_model import (
    ParallelModel,
    Strategy,
    configure_runtime,
    count_host_reads,
    kernels,
    preset,
    read_floats,
)

# After paddle, as this driver always imported it: only the allocator setting takes effect, the
# environment variables come too late (the golden losses were recorded this way).
configure_runtime()
GLOBAL_BATCH, SEQ = 8, 32


def batches(steps, vocab, seed=1234):
    """Token batches whose labels end in a different number of ignored positions per row, so the
    micro-batches hold different numbers of valid tokens (what the loss normalisation must get right)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = rng.integers(0, vocab, size=(GLOBAL_BATCH, SEQ + 1))
        labels = ids[:, 1:].copy()
        for row in range(GLOBAL_BATCH):
            labels[row, SEQ - 3 * row :] = -100
        yield ids[:, :-1], labels


def gather_whole(param):
    if param.is_dist():
        full = dist.reshard(param, param.process_mesh, [dist.Replicate()] * len(param.placements))
        return full._local_value().numpy()
    return param.numpy()


def eager_optimizer_state(pm, opt):
    """AdamW's accumulators as ``optimizer.<param name>.<accumulator>`` (the compiled step's names)."""
    names = {p.name: n for n, p in pm.named_parameters()}
    inner = opt.__dict__.get("_inner_opt", opt)
    return {
        f"optimizer.{names[auto]}.{acc}": tensor
        for acc, per_param in inner._accumulators.items()
        for auto, tensor in per_param.items()
        if auto in names
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", default="dp1")
    ap.add_argument("--schedule", default="1F1B")
    ap.add_argument("--virtual-pp-degree", type=int, default=1, help="chunks per rank under VPP")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the tiny config")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--adam-eps", type=float, default=1e-8)
    # a deliberate bug, to prove the parity bounds catch one: "token-count" normalises the loss by
    # one token too many, "lr" trains with a learning rate 1% off
    ap.add_argument("--mutate", choices=("token-count", "lr"), default=None)
    ap.add_argument("--micro-batches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--clip", type=float, default=0.5, help="0: no clipping")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stage-layers", default=None, help="layers per stage, e.g. 1,3")
    ap.add_argument("--load", default=None)
    ap.add_argument(
        "--static", action="store_true", help="train through dist.to_static (one micro-batch)"
    )
    ap.add_argument("--vary-lr", action="store_true", help="a different learning rate per step")
    # GPU only (refused on CPU in one line): what the GPU suite (test_gpu.py) compares
    ap.add_argument("--sequence-parallel", action="store_true")
    ap.add_argument("--sharding-stage", type=int, default=0)
    ap.add_argument("--compute-dtype", default="float32", help="float32 or bfloat16 (autocast)")
    args = ap.parse_args()

    cfg = preset("tiny", num_hidden_layers=args.layers)
    stage_layers = (
        tuple(int(n) for n in args.stage_layers.split(",")) if args.stage_layers else None
    )
    strategy = Strategy.parse(
        args.strategy,
        micro_batches=args.micro_batches,
        schedule=args.schedule,
        virtual_pp_degree=args.virtual_pp_degree,
        stage_layers=stage_layers,
        sequence_parallel=args.sequence_parallel,
        sharding_stage=args.sharding_stage,
    )
    pm = ParallelModel.build(cfg, strategy, seed=0, compute_dtype=args.compute_dtype)
    rank = pm.rank
    os.makedirs(args.out, exist_ok=True)

    if args.load:
        # The model starts from its seed-0 initialisation, which differs from the trained checkpoint.
        state = pm.state_dict(prefix="model.")
        pm.load_state_dict(args.load, prefix="model.")
        whole = {k: gather_whole(v) for k, v in state.items()}
        if pm.distributed:
            # every stage's parameters to rank 0
            gathered = []
            dist.all_gather_object(gathered, whole)
            merged = {}
            for part in gathered:
                merged.update(part)
            whole = merged
        if rank == 0:
            np.savez(os.path.join(args.out, "loaded.npz"), **whole)
    else:
        # The trainer's defaults (AdamW ε 1e-8) and the demo's learning rate (3e-3): Adam moves a
        # weight by about lr·g/(|g|+ε), which amplifies float32 reduction-order noise in small
        # gradients; test_dist_parity.py measures that floor and bounds the layouts by it.
        opt = paddle.optimizer.AdamW(
            learning_rate=args.lr,
            weight_decay=0.01,
            epsilon=args.adam_eps,
            parameters=pm.parameters(),
        )
        records = []
        kernels.reset_usage()
        # --vary-lr: a learning rate per step, set as a trainer's schedule sets it
        lrs = [args.lr * ((1 + step % 3) / 2 if args.vary_lr else 1) for step in range(args.steps)]
        if args.mutate == "lr":
            lrs = [lr * 1.01 for lr in lrs]
        if args.mutate == "token-count":
            count = pm.loss_fn.set_num_valid_tokens
            pm.loss_fn.set_num_valid_tokens = lambda n: count(n + 1)
        if args.static:
            step_fn = pm.to_static(opt, GLOBAL_BATCH, SEQ, clip_norm=args.clip)
            for step, (ids, labels) in enumerate(batches(args.steps, cfg.vocab_size)):
                step_fn.set_lr(lrs[step])
                loss = step_fn(ids, labels)
                records.append({"step": step, "loss": loss, "grad_norm": step_fn.grad_norm})
            step_fn.sync_module()  # the eager module evaluates the compiled step's weights
        else:
            opt = pm.shard_optimizer(opt)
            for step, (ids, labels) in enumerate(batches(args.steps, cfg.vocab_size)):
                opt.set_lr(lrs[step])
                with count_host_reads() as reads:  # the step as the trainer runs it
                    loss = pm.forward_backward_tensor(ids, labels)
                    if args.clip > 0:
                        norm = pm.clip_grad_norm_tensor(args.clip)
                    else:
                        norm = pm.grad_norm_tensor()
                    loss, norm = read_floats(loss, norm)
                    opt.step()
                    opt.clear_grad()
                records.append({"step": step, "loss": loss, "grad_norm": norm, "host_reads": reads})
        # two held-out batches, forward only (evaluate runs more than once between steps)
        for seed in (99, 100):
            ids, labels = next(batches(1, cfg.vocab_size, seed=seed))
            records.append({"step": "eval", "loss": pm.evaluate(ids, labels)})
        # every rank reports what it saw (and which paths the kernels took in its training and
        # evaluation), so the test can check all ranks agree
        seen, usage = [records], [kernels.usage()]
        if pm.distributed:
            seen, usage = [], []
            dist.all_gather_object(seen, records)
            dist.all_gather_object(usage, kernels.usage())
        if rank == 0:
            with open(os.path.join(args.out, "losses.json"), "w") as fh:
                report = {"strategy": args.strategy, "schedule": args.schedule, "ranks": seen}
                json.dump({**report, "kernel_usage": usage}, fh)
            with open(os.path.join(args.out, "losses.jsonl"), "w") as fh:
                fh.writelines(
                    json.dumps({k: r[k] for k in ("step", "loss", "grad_norm")}) + "\n"
                    for r in records
                    if r["step"] != "eval"
                )
        if args.static:
            state = step_fn.state_dict(prefix="model.")
            state.update(step_fn.optimizer_state_dict(prefix="optimizer."))
        else:
            state = pm.state_dict(prefix="model.")
            if not args.sharding_stage:  # sharded AdamW state is compared through the weights
                state.update(eager_optimizer_state(pm, opt))
        dist.save_state_dict(state, os.path.join(args.out, "ckpt"))
    if pm.distributed:
        dist.barrier()


if __name__ == "__main__":
    main()

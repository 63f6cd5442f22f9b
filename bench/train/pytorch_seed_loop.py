#!/usr/bin/env python3
"""The seed's own training loop in plain PyTorch: the baseline samout_ddp is measured against.

Written from ../../../shared/SPEC.md ("The seed's own training setting"): the reference SamOut
(tests/python/reference_model.py, imported, head reshapes included), torch.optim.Adam with
PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay, the implementation PyTorch picks
for CPU tensors), cross entropy over all B*T targets, and batches of B windows of seq_len+1 uniform
random tokens (inputs = window[:, :-1], targets = window[:, 1:]), one process, --threads intra-op
threads. Prints tokens/s over the steps after --warmup, and as its last line one JSON object:
    {"tokens_per_s": ..., "step_ms": ..., "steps": ..., "threads": ..., ...}

    .venv/bin/python bench/train/pytorch_seed_loop.py --threads=2 --steps=20 --warmup=3
    ... --profile=5   also prints torch.profiler's per-op table over 5 extra steps
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
from reference_model import SamOut  # noqa: E402  (the seed's model, from SPEC.md)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Defaults: configs/seed.flags.
    p.add_argument("--vocab_size", type=int, default=8460)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=49, help="tokens predicted per window")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=20, help="measured steps")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps before them")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0,
                   help="after the measured steps, profile this many more with torch.profiler")
    return p.parse_args(argv)


def train_step(model, opt, args, gen):
    # A batch of uniform random windows, as in the seed's benchmark.
    window = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=gen)
    inputs, targets = window[:, :-1], window[:, 1:]
    logits, _ = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, args.vocab_size), targets.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = SamOut(args.vocab_size, args.hidden, args.heads, args.layers)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_step = args.batch_size * args.seq_len
    print(f"pytorch_seed_loop: torch {torch.__version__}, {n_params:,} parameters, "
          f"batch {args.batch_size} x {args.seq_len} tokens, {torch.get_num_threads()} threads, "
          f"{args.warmup} warmup + {args.steps} measured steps", flush=True)

    for _ in range(args.warmup):
        train_step(model, opt, args, gen)
    step_s = []
    loss = None
    for step in range(args.steps):
        t0 = time.perf_counter()
        loss = train_step(model, opt, args, gen)
        step_s.append(time.perf_counter() - t0)
    loss_v = float(loss) if loss is not None else float("nan")  # after timing: no sync inside it
    total = sum(step_s)
    tps = args.steps * tokens_per_step / total if total > 0 else 0.0
    print(f"pytorch_seed_loop: {tps:.0f} tokens/s, {1000 * total / max(1, args.steps):.1f} ms/step "
          f"(median {1000 * sorted(step_s)[len(step_s) // 2]:.1f}), last loss {loss_v:.4f}",
          flush=True)

    if args.profile > 0:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile):
                train_step(model, opt, args, gen)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    print(json.dumps({"tokens_per_s": tps, "step_ms": 1000 * total / max(1, args.steps),
                      "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
                      "params": n_params, "loss": loss_v}))


if __name__ == "__main__":
    main()

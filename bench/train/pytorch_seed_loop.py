#!/usr/bin/env python3
"""The seed's own training loop in plain PyTorch: the baseline samout_ddp is measured against.

Written from docs/model.md ("Training: the seed's setting and ours"): the reference SamOut
(tests/python/reference_model.py, imported, head reshapes included), torch.optim.Adam with
PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay, the implementation PyTorch picks
for the device), cross entropy over all B*T targets, and batches of B windows of seq_len+1 uniform
random tokens (inputs = window[:, :-1], targets = window[:, 1:]), one process, --threads intra-op
threads. Prints tokens/s over the steps after --warmup, and as its last line one JSON object:
    {"tokens_per_s": ..., "step_ms": ..., "steps": ..., "threads": ..., ...}

    .venv/bin/python bench/train/pytorch_seed_loop.py --threads=2 --steps=20 --warmup=3
    ... --profile=5   also prints torch.profiler's per-op table over 5 extra steps

The stronger PyTorch variants, as launch/gpu_check.sh runs them on a GPU:
    ... --device=cuda --precision=bf16 --seq_len=1024          bf16 autocast, eager
    ... --device=cuda --compile=reduce-overhead --fused_adam   torch.compile (CUDA graphs), fused Adam
    ... --device=cuda --decode_tokens=200 --steps=0            batch-1 stateful decoding only
On CUDA the batches are drawn on the device, the measured steps are bracketed by
torch.cuda.synchronize() (tokens/s = measured tokens / that wall time), per-step times come from
CUDA events, and the JSON adds the peak of torch.cuda.max_memory_allocated over warm-up and
measured steps. --compile's first steps (warm-up) include the compilation: give it --warmup >= 3.
--decode_tokens=N times N single-token steps of batch 1 after a --decode_context-token prompt,
carrying each layer's running maximum as the state (docs/model.md, State), each step ending with the
next id (greedy) on the host as a streaming generator needs it.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
from reference_model import SamOut  # noqa: E402  (the seed's model, docs/model.md)


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
    p.add_argument("--steps", type=int, default=20, help="measured steps (0: no training)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps before them")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0,
                   help="after the measured steps, profile this many more with torch.profiler")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: forward and loss under torch.autocast(bfloat16); weights and Adam fp32")
    p.add_argument("--compile", nargs="?", const="default", default="none",
                   help="torch.compile the forward+loss: --compile (mode 'default') or "
                        "--compile=MODE (reduce-overhead, max-autotune, ...); 'none' = eager")
    p.add_argument("--fused_adam", action="store_true", help="torch.optim.Adam(fused=True)")
    p.add_argument("--decode_tokens", type=int, default=0,
                   help="also time this many batch-1 decoding steps with the carried state")
    p.add_argument("--decode_context", type=int, default=100, help="prompt length before them")
    p.add_argument("--decode_warmup", type=int, default=20, help="untimed decoding steps first")
    args = p.parse_args(argv)
    if args.compile in ("", "none", "no", "off"):
        args.compile = "none"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device=cuda but torch.cuda.is_available() is False")
    return args


class Loop:
    """One training step of the seed's loop, in the configured variant."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        # The batches: drawn on the device (no host copy inside the step on CUDA).
        self.gen = torch.Generator(device=self.device).manual_seed(args.seed)
        self.model = SamOut(args.vocab_size, args.hidden, args.heads, args.layers).to(self.device)
        self.model.train()
        opt_kw = {"fused": True} if args.fused_adam else {}
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr, **opt_kw)
        self.loss_fn = self._loss
        if args.compile != "none":
            self.loss_fn = torch.compile(self._loss, mode=None if args.compile == "default"
                                         else args.compile)
        # CUDA graphs (mode reduce-overhead) reuse their output buffers: mark each new step.
        self.mark_step = (args.compile != "none" and "reduce-overhead" in args.compile
                          and hasattr(torch, "compiler")
                          and hasattr(torch.compiler, "cudagraph_mark_step_begin"))

    def _autocast(self):
        if self.args.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss(self, inputs, targets):
        with self._autocast():
            logits, _ = self.model(inputs)
            return F.cross_entropy(logits.reshape(-1, self.args.vocab_size), targets.reshape(-1))

    def step(self):
        a = self.args
        # A batch of uniform random windows, as in the seed's benchmark.
        window = torch.randint(0, a.vocab_size, (a.batch_size, a.seq_len + 1), generator=self.gen,
                               device=self.device)
        inputs, targets = window[:, :-1], window[:, 1:]
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        loss = self.loss_fn(inputs, targets)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(loop, args):
    """Warm-up steps, then args.steps timed ones. Returns (total seconds, per-step ms, last loss,
    seconds of the warm-up)."""
    dev = loop.device
    t_w = time.perf_counter()
    for _ in range(args.warmup):
        loop.step()
    sync(dev)
    warm_s = time.perf_counter() - t_w
    loss = None
    if dev.type == "cuda":
        # Per-step times from events recorded between steps: no host sync inside the timed loop.
        events = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)]
        t0 = time.perf_counter()
        events[0].record()
        for i in range(args.steps):
            loss = loop.step()
            events[i + 1].record()
        sync(dev)
        total = time.perf_counter() - t0
        step_ms = [events[i].elapsed_time(events[i + 1]) for i in range(args.steps)]
    else:
        step_s = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = loop.step()
            step_s.append(time.perf_counter() - t0)
        total = sum(step_s)
        step_ms = [1000 * s for s in step_s]
    loss_v = float(loss) if loss is not None else float("nan")  # after timing: no sync inside it
    return total, step_ms, loss_v, warm_s


@torch.inference_mode()
def measure_decode(model, args, device):
    """Batch-1 decoding with the running max of every layer carried as the state: ms per token."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    prompt = torch.randint(0, args.vocab_size, (1, args.decode_context), generator=gen, device=device)
    logits, state = model(prompt)
    tok = logits[:, -1:].argmax(-1)  # (1, 1)
    times = []
    for i in range(args.decode_warmup + args.decode_tokens):
        t0 = time.perf_counter()
        logits, state = model(tok, state)
        tok = logits[:, -1:].argmax(-1)
        tok.item()  # the id on the host, as a streaming generator needs it
        if i >= args.decode_warmup:
            times.append(time.perf_counter() - t0)
    model.train()
    times.sort()
    med_ms = 1000 * times[len(times) // 2]
    mean_ms = 1000 * sum(times) / len(times)
    return {"decode_tokens": args.decode_tokens, "decode_context": args.decode_context,
            "decode_ms_per_token": med_ms, "decode_ms_per_token_mean": mean_ms,
            "decode_tokens_per_s": 1000.0 / med_ms}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    loop = Loop(args)
    n_params = sum(p.numel() for p in loop.model.parameters())
    tokens_per_step = args.batch_size * args.seq_len
    variant = (f"{args.precision}, {'eager' if args.compile == 'none' else 'compile ' + args.compile}"
               f"{', fused Adam' if args.fused_adam else ''}")
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"pytorch_seed_loop: torch {torch.__version__}, {n_params:,} parameters, "
          f"batch {args.batch_size} x {args.seq_len} tokens, {where}, {variant}, "
          f"{args.warmup} warmup + {args.steps} measured steps", flush=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {}
    if args.steps > 0:
        total, step_ms, loss_v, warm_s = measure_training(loop, args)
        tps = args.steps * tokens_per_step / total if total > 0 else 0.0
        med = sorted(step_ms)[len(step_ms) // 2]
        print(f"pytorch_seed_loop: {tps:.0f} tokens/s, {1000 * total / args.steps:.1f} ms/step "
              f"(median {med:.1f}), last loss {loss_v:.4f}", flush=True)
        result = {"tokens_per_s": tps, "step_ms": 1000 * total / args.steps,
                  "step_ms_median": med, "warmup_s": warm_s, "loss": loss_v}
        if device.type == "cuda":
            result["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
            result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
            print(f"pytorch_seed_loop: peak memory allocated "
                  f"{result['peak_mem_bytes'] / 2**30:.2f} GiB", flush=True)

    if args.profile > 0 and args.steps > 0:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(args.profile):
                loop.step()
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25))

    if args.decode_tokens > 0:
        d = measure_decode(loop.model, args, device)
        print(f"pytorch_seed_loop: decode batch 1 after {args.decode_context} tokens: "
              f"{d['decode_ms_per_token']:.3f} ms/token median, {d['decode_tokens_per_s']:.1f} "
              f"tokens/s", flush=True)
        result.update(d)

    result.update({"steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
                   "params": n_params, "device": args.device,
                   "device_name": where if device.type == "cuda" else "cpu",
                   "precision": args.precision, "compile": args.compile,
                   "fused_adam": args.fused_adam, "batch_size": args.batch_size,
                   "seq_len": args.seq_len, "torch": torch.__version__})
    if "loss" not in result:
        result["loss"] = float("nan")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

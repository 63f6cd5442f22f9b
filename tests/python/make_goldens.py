"""Regenerates tests/golden/parity_tiny.h5, the values the C++ parity test must reproduce.

    .venv/bin/python tests/python/make_goldens.py [--output tests/golden/parity_tiny.h5]

It builds the reference SamOut (reference_model.py) for a tiny configuration with weights drawn
from a fixed seed, runs one batch, and stores in one HDF5 file (h5py):
  attrs: vocab_size, hidden, layers, heads, pad_id, torch_version
  params/<name>   every parameter, under the seed's state_dict names
  tokens (B, T) int64, targets (B, T) int64
  logits (B, T, V) fp32, loss () fp32
  grads/<name>    d loss / d parameter, fp32
  logits_pieces   logits of the same tokens run in pieces [0,3), [3,7), [7,T) with the state carried
The alphas are perturbed away from 0.5 so that a mix-up of alpha1..alpha5 changes the result.
"""
import argparse
import os

import h5py
import numpy as np
import torch

from reference_model import SamOut

CFG = dict(vocab_size=37, hidden=24, layers=2, heads=4, pad_id=3)
B, T = 3, 11


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default=os.path.join(here, "..", "golden", "parity_tiny.h5"))
    args = ap.parse_args()

    torch.manual_seed(1234)
    model = SamOut(CFG["vocab_size"], CFG["hidden"], CFG["heads"], CFG["layers"], CFG["pad_id"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name or "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))  # distinct values for every alpha and LN param
    tokens = torch.randint(0, CFG["vocab_size"], (B, T))
    tokens[0, 2] = CFG["pad_id"]  # exercise the padding row
    targets = torch.randint(0, CFG["vocab_size"], (B, T))
    targets[1, 4] = CFG["pad_id"]  # exercise ignore_index

    logits, _ = model(tokens)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, CFG["vocab_size"]), targets.reshape(-1), ignore_index=CFG["pad_id"])
    loss.backward()

    with torch.no_grad():
        pieces, state = [], None
        for lo, hi in [(0, 3), (3, 7), (7, T)]:
            out, state = model(tokens[:, lo:hi], state)
            pieces.append(out)
        logits_pieces = torch.cat(pieces, dim=1)

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with h5py.File(tmp, "w") as f:
        for k, v in CFG.items():
            f.attrs[k] = v
        f.attrs["torch_version"] = str(torch.__version__)
        for name, p in model.named_parameters():
            f[f"params/{name}"] = p.detach().numpy()
            f[f"grads/{name}"] = p.grad.numpy()
        f["tokens"] = tokens.numpy().astype(np.int64)
        f["targets"] = targets.numpy().astype(np.int64)
        f["logits"] = logits.detach().numpy()
        f["loss"] = np.float32(loss.item())
        f["logits_pieces"] = logits_pieces.numpy()
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: loss {loss.item():.6f}")


if __name__ == "__main__":
    main()

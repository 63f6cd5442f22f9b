"""Loads libsamout_ops.so into this Python's torch, as a PyTorch user would, for the op tests.

The library's path comes from SAMOUT_OPS_LIBRARY (ctest sets it to the built target); the reference
model (tests/python/reference_model.py) is made importable beside it.
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))


def load():
    path = os.environ.get("SAMOUT_OPS_LIBRARY")
    if not path or not os.path.exists(path):
        raise SystemExit(f"SAMOUT_OPS_LIBRARY must name the built libsamout_ops.so, got {path!r}")
    torch.ops.load_library(path)
    return torch.ops.samout

"""SamOut in plain PyTorch, from docs/model.md and the seed's code (line breaks restored).

This is the reference the C++ model is tested against (tests/model/parity_test.cpp, through the
goldens that make_goldens.py writes) and the PyTorch side of the benchmarks in bench/. It keeps the
seed's structure on purpose, head reshapes included, so that it is the seed's model and not ours.
"""
import torch
from torch import nn


class MaxStateSuper(nn.Module):
    def __init__(self, dim_size, heads):
        super().__init__()
        assert dim_size % heads == 0, "Dimension size must be divisible by head size."
        self.heads = heads
        self.combined = nn.Linear(dim_size, 3 * dim_size, bias=False)
        self.alpha1 = nn.Parameter(torch.tensor(0.5))
        self.alpha2 = nn.Parameter(torch.tensor(0.5))
        self.alpha3 = nn.Parameter(torch.tensor(0.5))
        self.alpha4 = nn.Parameter(torch.tensor(0.5))
        self.alpha5 = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, state=None):
        b, s, d = x.shape
        out, out1, out2 = self.combined(x).chunk(3, dim=-1)
        out = out.view(b, s, self.heads, -1).permute(0, 2, 1, 3)
        out1 = out1.view(b, s, self.heads, -1).permute(0, 2, 1, 3)
        out2 = out2.view(b, s, self.heads, -1).permute(0, 2, 1, 3)
        if state is not None:
            # docs/model.md's state: the running max at the last position, (b, d), as position -1.
            st = state.view(b, 1, self.heads, -1).permute(0, 2, 1, 3)
            out3 = torch.cummax(torch.cat([st, out2], dim=2), dim=2)[0][:, :, 1:]
        else:
            out3 = torch.cummax(out2, dim=2)[0]
        new_state = out3[:, :, -1].reshape(b, d).detach()
        out = self.gen_model(out, out1, out2, out3)
        out = out.permute(0, 2, 1, 3).contiguous().view(b, s, d)
        return out, new_state

    def gen_model(self, a, b, c, d):
        x = self.alpha1 * b + self.alpha2 * d + self.alpha3 * a + self.alpha4 * c
        x1 = a * d + x
        x2 = b * d + x1
        x3 = c * d + x2
        return d * self.alpha5 + x3


class FeedForward(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.ffn1 = nn.Linear(hidden_size, hidden_size)
        self.ffn2 = nn.Linear(hidden_size, hidden_size)
        self.gate = nn.Linear(hidden_size, hidden_size)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.ffn2(self.ffn1(x) * self.relu(self.gate(x)))


class DecoderLayer(nn.Module):
    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.self_attention = MaxStateSuper(hidden_size, num_heads)
        self.ffn = FeedForward(hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size)
        self.alpha = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, state=None):
        x1, state = self.self_attention(x, state)
        x = self.layer_norm(self.alpha * self.ffn(x1) + (1 - self.alpha) * x)
        return x, state


class SamOut(nn.Module):
    def __init__(self, voc_size, hidden_size, num_heads, num_layers, pad_id=None):
        super().__init__()
        self.em = nn.Embedding(voc_size, hidden_size, padding_idx=pad_id)
        self.decoder_layers = nn.ModuleList(
            [DecoderLayer(hidden_size, num_heads) for _ in range(num_layers)])
        self.head = nn.Linear(hidden_size, voc_size, bias=False)

    def forward(self, x, state=None):
        x = self.em(x)
        states = []
        for i, layer in enumerate(self.decoder_layers):
            x1, s = layer(x, state[i] if state is not None else None)
            x = x1 + x
            states.append(s)
        return self.head(x), states

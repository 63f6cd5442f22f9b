"""samout::mix_layer_norm as a PyTorch user sees it: torch.library.opcheck on the top-level op
(fused fp32 path and the double composite) and on the fused forward and backward ops, and values
and gradients against reference_model.DecoderLayer's layer_norm and alpha."""
import unittest

import torch

import op_library

ops = op_library.load()
import reference_model  # noqa: E402  (op_library puts tests/python on sys.path)

EPS = 1e-5
SHAPE = (2, 5, 16)


def inputs(dtype=torch.float32, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    d = SHAPE[-1]
    ts = [torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g), torch.tensor(0.3),
          1 + 0.5 * torch.randn(d, generator=g), 0.1 * torch.randn(d, generator=g)]
    return [t.to(dtype).requires_grad_(requires_grad) for t in ts]


class MixNormOpTest(unittest.TestCase):
    def test_opcheck_top_level(self):
        for dtype in (torch.float32, torch.float64):
            for residual in (False, True):
                with self.subTest(dtype=dtype, residual=residual):
                    torch.library.opcheck(ops.mix_layer_norm.default,
                                          (*inputs(dtype), EPS, residual))

    def test_opcheck_forward_and_backward(self):
        for residual in (False, True):
            with self.subTest(residual=residual):
                f, x, alpha, gamma, beta = inputs(requires_grad=False)
                torch.library.opcheck(ops.mix_layer_norm_forward.default,
                                      (f, x, alpha, gamma, beta, EPS, residual))
                _, mean, rstd = ops.mix_layer_norm_forward(f, x, alpha, gamma, beta, EPS, residual)
                grad = torch.randn(SHAPE)
                torch.library.opcheck(ops.mix_layer_norm_backward.default,
                                      (grad, f, x, alpha, gamma, mean, rstd, residual))

    def test_against_reference_model(self):
        torch.manual_seed(1)
        layer = reference_model.DecoderLayer(SHAPE[-1], 4)
        with torch.no_grad():
            layer.alpha.fill_(0.3)
            layer.layer_norm.weight.normal_(1, 0.5)
            layer.layer_norm.bias.normal_(0, 0.1)
        ln = layer.layer_norm
        params = [layer.alpha, ln.weight, ln.bias]
        for residual in (False, True):
            with self.subTest(residual=residual):
                f, x = (torch.randn(SHAPE, requires_grad=True) for _ in range(2))
                w = torch.randn(SHAPE)
                want = ln(layer.alpha * f + (1 - layer.alpha) * x) + (x if residual else 0)
                want_grads = torch.autograd.grad((want * w).sum(), [f, x, *params])
                got = ops.mix_layer_norm(f, x, layer.alpha, ln.weight, ln.bias, ln.eps, residual)
                self.assertIn("MixLayerNorm", got.grad_fn.name())
                got_grads = torch.autograd.grad((got * w).sum(), [f, x, *params])
                torch.testing.assert_close(got, want)
                for name, g, r in zip(["f", "x", "alpha", "gamma", "beta"], got_grads, want_grads):
                    torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5,
                                               msg=lambda m, n=name: f"{n}: {m}")


if __name__ == "__main__":
    unittest.main()

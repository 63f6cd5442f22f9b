"""samout::gated_ffn as a PyTorch user sees it: opcheck on the op and on its fused CPU halves, and
the op against reference_model.FeedForward in value and in all gradients."""
import unittest

import torch

import op_library

ops = op_library.load()
import reference_model  # noqa: E402 (op_library puts it on sys.path)

D = 16


def inputs(dtype=torch.float32, requires_grad=True, shape=(2, 5, D)):
    g = torch.Generator().manual_seed(0)
    sizes = [shape, (D, D), (D,), (D, D), (D,), (D, D), (D,)]
    return tuple((0.3 * torch.randn(s, generator=g, dtype=dtype)).requires_grad_(requires_grad)
                 for s in sizes)


class GatedFfnOpTest(unittest.TestCase):
    def test_opcheck_fused(self):
        torch.library.opcheck(ops.gated_ffn, inputs())

    def test_opcheck_inference_fp32(self):  # the composite, whose few rows take the GEMV
        torch.library.opcheck(ops.gated_ffn, inputs(requires_grad=False, shape=(1, 1, D)))

    def test_opcheck_composite_double(self):
        torch.library.opcheck(ops.gated_ffn, inputs(torch.float64))

    def test_opcheck_forward_and_backward(self):
        args = inputs(requires_grad=False)
        torch.library.opcheck(ops.gated_ffn_forward, args)
        out, u, h = ops.gated_ffn_forward(*args)
        y, w1, _, wg, _, w2, _ = args
        for need_dy in (True, False):
            torch.library.opcheck(ops.gated_ffn_backward,
                                  (torch.randn_like(out), y, w1, wg, w2, u, h, need_dy))

    def test_matches_reference_feed_forward(self):
        torch.manual_seed(0)
        ref = reference_model.FeedForward(D)
        y = torch.randn(2, 5, D, requires_grad=True)
        params = (ref.ffn1.weight, ref.ffn1.bias, ref.gate.weight, ref.gate.bias, ref.ffn2.weight,
                  ref.ffn2.bias)
        ours = [t.detach().clone().requires_grad_() for t in (y,) + params]
        up = torch.randn(2, 5, D)
        want = ref(y)
        want.backward(up)
        got = ops.gated_ffn(*ours)
        self.assertIn("GatedFfnFunction", got.grad_fn.name())  # the fused path
        got.backward(up)
        torch.testing.assert_close(got, want)
        for mine, theirs in zip(ours, (y,) + params):
            torch.testing.assert_close(mine.grad, theirs.grad)


if __name__ == "__main__":
    unittest.main()

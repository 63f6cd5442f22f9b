"""torch.ops.samout.cummax_gate as a PyTorch user calls it: opcheck, and the seed's MaxStateSuper."""
import unittest

import torch

import op_library
import reference_model

ops = op_library.load()


def gate_inputs(B=2, T=7, d=8, dtype=torch.float32, state=False, grad=True):
    g = torch.Generator().manual_seed(B * 100 + T)
    y = torch.randn(B, T, 3 * d, generator=g, dtype=dtype).requires_grad_(grad)
    alphas = torch.rand(5, generator=g, dtype=dtype).requires_grad_(grad)
    s = torch.randn(B, d, generator=g, dtype=dtype) if state else None
    return y, alphas, s


class OpCheck(unittest.TestCase):
    def test_top_level_op(self):
        for dtype in (torch.float32, torch.float64):
            for state in (False, True):
                with self.subTest(dtype=dtype, state=state):
                    torch.library.opcheck(ops.cummax_gate.default,
                                          gate_inputs(dtype=dtype, state=state))

    def test_forward_and_backward_ops(self):
        y, alphas, s = gate_inputs(state=True, grad=False)
        T = y.shape[1]
        for chunks in (0, T):  # inference saves nothing; the CPU kernel saves m at every step
            torch.library.opcheck(ops.cummax_gate_forward.default, (y, alphas, s, chunks))
        out, _, saved = ops.cummax_gate_forward(y, alphas, s, T)
        torch.library.opcheck(ops.cummax_gate_backward.default,
                              (torch.randn_like(out), y, alphas, saved))

    def test_bad_inputs_name_what_is_wrong(self):
        y, alphas, _ = gate_inputs(grad=False)
        with self.assertRaisesRegex(RuntimeError, "alphas must be \\(5,\\)"):
            ops.cummax_gate(y, alphas[:4])
        with self.assertRaisesRegex(RuntimeError, "chunks must be 0 or T"):
            ops.cummax_gate_forward(y, alphas, None, 3)


class AgainstTheSeed(unittest.TestCase):
    """The op, fed MaxStateSuper's own projection and alphas, against MaxStateSuper's forward."""

    def check(self, with_state):
        torch.manual_seed(3)
        B, T, d, heads = 3, 11, 16, 4
        ref = reference_model.MaxStateSuper(d, heads)
        with torch.no_grad():
            for i, a in enumerate((ref.alpha1, ref.alpha2, ref.alpha3, ref.alpha4, ref.alpha5)):
                a.fill_(0.2 + 0.15 * i)
        x = torch.randn(B, T, d, requires_grad=True)
        state = torch.randn(B, d) if with_state else None
        want, want_state = ref(x, state)
        alphas = torch.stack([ref.alpha1, ref.alpha2, ref.alpha3, ref.alpha4, ref.alpha5])
        got, got_state = ops.cummax_gate(ref.combined(x), alphas, state)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_state, want_state, rtol=0, atol=0)
        g = torch.randn_like(want)
        params = [x, ref.combined.weight, ref.alpha1, ref.alpha2, ref.alpha3, ref.alpha4,
                  ref.alpha5]
        want_grads = torch.autograd.grad(want, params, g)
        got_grads = torch.autograd.grad(got, params, g)
        for name, a, b in zip(["x", "combined", "alpha1", "alpha2", "alpha3", "alpha4", "alpha5"],
                              got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")

    def test_whole_sequence(self):
        self.check(with_state=False)

    def test_with_a_carried_state(self):
        self.check(with_state=True)


class TracedOnCuda(unittest.TestCase):
    """The op's autograd path on fake CUDA tensors, as torch.compile and opcheck's aot_dispatch trace
    it: no GPU is needed (nor asked), sizes may be symbolic, and nothing reads a real stride, offset
    or pointer. The saved carries then hold ceil(T / 128) chunks, an expression in T. The backward
    op is called as the autograd node calls it: autograd's engine itself needs a real device to run
    a CUDA backward."""

    def trace(self, mode, y0):
        with mode:
            y = y0.to("cuda").requires_grad_()
            alphas = torch.rand(5, device="cuda", requires_grad=True)
            state = torch.zeros(y.shape[0], y.shape[2] // 3, device="cuda")
            out, last = ops.cummax_gate(y, alphas, state)  # the Autograd kernel picks the chunks
            self.assertIsNotNone(out.grad_fn)
            _, _, saved = ops.cummax_gate_forward(y.detach(), alphas.detach(), state,
                                                  (y.shape[1] + 127) // 128)
            grad_y, grad_alphas = ops.cummax_gate_backward(torch.ones_like(out), y.detach(),
                                                           alphas.detach(), saved)
        self.assertEqual(tuple(grad_alphas.shape), (5,))
        return y, out, last, saved, grad_y

    def test_dynamic_sizes_forward_and_backward(self):
        from torch._dynamo.source import ConstantSource
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import (DimDynamic, ShapeEnv,
                                                           StatelessSymbolicContext)
        env = ShapeEnv()
        mode = FakeTensorMode(shape_env=env)
        ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * 3)
        y0 = mode.from_tensor(torch.randn(2, 300, 24), source=ConstantSource("y"),
                              symbolic_context=ctx)
        B, T, D3 = y0.shape
        self.assertTrue(all(isinstance(n, torch.SymInt) for n in (B, T, D3)))
        y, out, last, saved, grad_y = self.trace(mode, y0)
        self.assertEqual(out.device.type, "cuda")
        self.assertEqual(tuple(out.shape), (B, T, D3 // 3))
        self.assertEqual(tuple(last.shape), (B, D3 // 3))
        self.assertEqual(tuple(grad_y.shape), (B, T, D3))
        self.assertEqual(tuple(saved.shape), (B, (T + 127) // 128, D3 // 3))
        # T stayed a symbol: no guard pinned it (or B) to the example's value.
        pinned = [str(g.expr) for g in env.guards
                  if str(g.expr) in (f"Eq({T.node.expr}, 300)", f"Eq({B.node.expr}, 2)")]
        self.assertEqual(pinned, [])
        self.assertIsInstance(out.shape[1], torch.SymInt)

    def test_static_sizes_ask_no_gpu(self):
        from torch._subclasses.fake_tensor import FakeTensorMode
        mode = FakeTensorMode()
        y0 = mode.from_tensor(torch.randn(3, 1000, 48))
        y, out, last, saved, grad_y = self.trace(mode, y0)
        self.assertEqual(tuple(out.shape), (3, 1000, 16))
        self.assertEqual(tuple(grad_y.shape), (3, 1000, 48))
        self.assertEqual(tuple(saved.shape), (3, 8, 16))


@unittest.skipUnless(torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
                         "samout::cummax_gate_forward", "CUDA"), "no CUDA device or kernels")
class OnCuda(unittest.TestCase):
    """The CUDA kernels through the dispatcher: opcheck, and the same results as the CPU kernel."""

    def test_opcheck(self):
        for state in (False, True):
            y, alphas, s = gate_inputs(B=3, T=300, d=64, state=state)
            s = s.cuda() if s is not None else None
            args = (y.detach().cuda().requires_grad_(), alphas.detach().cuda().requires_grad_(), s)
            torch.library.opcheck(ops.cummax_gate.default, args)

    def test_same_as_the_cpu_kernel(self):
        y, alphas, s = gate_inputs(B=3, T=1000, d=64, state=True)
        out, st = ops.cummax_gate(y, alphas, s)
        g = torch.randn_like(out)
        gy, ga = torch.autograd.grad(out, (y, alphas), g)
        yc = y.detach().cuda().requires_grad_()
        ac = alphas.detach().cuda().requires_grad_()
        out_c, st_c = ops.cummax_gate(yc, ac, s.cuda())
        gyc, gac = torch.autograd.grad(out_c, (yc, ac), g.cuda())
        torch.testing.assert_close(out_c.cpu(), out)
        torch.testing.assert_close(st_c.cpu(), st, rtol=0, atol=0)
        torch.testing.assert_close(gyc.cpu(), gy)
        torch.testing.assert_close(gac.cpu(), ga, rtol=1e-4, atol=1e-3)


if __name__ == "__main__":
    unittest.main()

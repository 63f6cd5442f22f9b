"""samout::cross_entropy_sum and its forward op as PyTorch sees them: torch.library.opcheck, and
value and gradient against F.cross_entropy(reduction="sum"), with which the seed trains."""
import unittest

import torch
import torch.nn.functional as F

import op_library

ops = op_library.load()
# The forward op is not differentiable (the top-level op's autograd kernel wraps it), so it gets no
# input requiring grad, and test_autograd_registration refuses to run without one.
FORWARD_UTILS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


def inputs(n, v, dtype=torch.float32, ignore=None, device="cpu", seed=0):
    """Logits (n, v) requiring grad and targets, every third row ignore when it is given."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, v, generator=g, dtype=dtype)).to(device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    if ignore is not None:
        targets[::3] = ignore
    return logits, targets.to(device)


# (dtype, ignore_index, ignored rows): fp32 takes the fused CPU kernel, double the composite.
CASES = [(torch.float32, -100, False), (torch.float32, 3, True), (torch.float64, -100, True)]


class CrossEntropyOpTest(unittest.TestCase):
    def check_device(self, device):
        for dtype, ignore, ignored in CASES:
            with self.subTest(dtype=dtype, ignore=ignore, ignored=ignored):
                logits, targets = inputs(29, 67, dtype, ignore if ignored else None, device)
                torch.library.opcheck(ops.cross_entropy_sum.default, (logits, targets, ignore))
                for with_grad in (True, False):
                    torch.library.opcheck(ops.cross_entropy_sum_forward.default,
                                          (logits.detach(), targets, ignore, with_grad),
                                          test_utils=FORWARD_UTILS)

                loss = ops.cross_entropy_sum(logits, targets, ignore)
                (0.5 * loss).backward()
                ref = logits.detach().double().requires_grad_()
                want = F.cross_entropy(ref, targets, ignore_index=ignore, reduction="sum")
                (0.5 * want).backward()
                tol = 1e-5 if dtype == torch.float32 else 1e-10
                torch.testing.assert_close(loss.double(), want.detach(), rtol=tol, atol=tol)
                torch.testing.assert_close(logits.grad.double(), ref.grad, rtol=tol, atol=tol)
                if ignored:  # ignored rows get exactly no gradient
                    self.assertEqual(logits.grad[::3].abs().max().item(), 0.0)

    def test_cpu(self):
        self.check_device("cpu")

    @unittest.skipUnless(torch.cuda.is_available(), "no CUDA device")
    def test_cuda(self):
        self.check_device("cuda")

    def test_non_contiguous_takes_the_composite(self):
        logits, targets = inputs(16, 40, seed=1)
        lt = logits.detach().t().contiguous().t().requires_grad_()
        torch.library.opcheck(ops.cross_entropy_sum.default, (lt, targets))
        loss = ops.cross_entropy_sum(lt, targets)
        loss.backward()
        want = F.cross_entropy(logits, targets, reduction="sum")
        want.backward()
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(lt.grad, logits.grad)

    def test_no_grad_inference_and_errors(self):
        logits, targets = inputs(8, 11, seed=2)
        want = F.cross_entropy(logits.detach(), targets, reduction="sum")
        with torch.no_grad():
            torch.testing.assert_close(ops.cross_entropy_sum(logits, targets), want)
        with torch.inference_mode():
            torch.testing.assert_close(ops.cross_entropy_sum(logits.detach(), targets), want)
        with self.assertRaisesRegex(RuntimeError, "logits \\(N, V\\) and targets \\(N,\\)"):
            ops.cross_entropy_sum(logits, targets[:4])
        with self.assertRaisesRegex(RuntimeError, "floating logits and integer targets"):
            ops.cross_entropy_sum(logits, logits[:, 0])

    def test_second_backward_is_refused(self):
        logits, targets = inputs(4, 9, seed=3)
        loss = ops.cross_entropy_sum(logits, targets)
        loss.backward(retain_graph=True)
        # backward's in-place scaling bumps the saved buffer's version, so autograd refuses before
        # the op's own check does.
        with self.assertRaisesRegex(RuntimeError, "modified by an inplace|second backward"):
            loss.backward()


if __name__ == "__main__":
    unittest.main()

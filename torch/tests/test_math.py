"""The model's linears and our AdamW against independent references."""

import unittest

import torch

from helpers import MODEL
from sltrain_torch.adamw import (MAP_SIGNED, MAP_UNSIGNED, AdamW, dequantize, nearest_code,
                                 quantize)
from sltrain_torch.model import BlockLinear, Config, Llama, Method, init_fresh
from sltrain_torch.rng import Rng, permutation


class LinearTest(unittest.TestCase):
    def test_sltrain_and_lowrank_equal_their_dense_weight_in_float64(self):
        g = torch.Generator().manual_seed(0)
        for kind in ("sltrain", "lowrank", "relora"):
            lin = BlockLinear(Method(kind, 3, 6.0, 0.2), 7, 5, torch.float64)
            for p in list(lin.parameters()) + ([lin.frozen] if kind == "relora" else []):
                p.data.normal_(generator=g)
            w = (lin.B.detach() * 2.0) @ lin.A.detach()
            if kind == "sltrain":
                lin.support.copy_(torch.randperm(35, generator=g)[:7].sort()[0])
                w.view(-1)[lin.support] += lin.V.detach()
            if kind == "relora":
                w += lin.frozen
            x = torch.randn(4, 5, dtype=torch.float64, generator=g)
            self.assertTrue(torch.allclose(lin(x), x @ w.T, atol=1e-12), kind)

    def test_gradients_match_finite_differences(self):
        cfg = Config(dict(MODEL, vocabSize=11, hidden=8, intermediate=12, layers=1))
        model = Llama(cfg, Method("sltrain", 2, 1.0, 0.1), torch.float64)
        init_fresh(model, "hf", 0)
        torch.nn.init.normal_(model.layers[0].q.B, std=0.1)
        x = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
        params = list(model.parameters())
        for i in (1, 3, 4, len(params) - 1):  # norm gain, A, V of q; the head
            p = params[i]
            (grad,) = torch.autograd.grad(model.loss(x, x), p)
            k = (p.numel() - 1) // 2
            with torch.no_grad():
                p.view(-1)[k] += 1e-6
                up = model.loss(x, x)
                p.view(-1)[k] -= 2e-6
                down = model.loss(x, x)
                p.view(-1)[k] += 1e-6
            self.assertAlmostEqual(float(grad.view(-1)[k]), float((up - down) / 2e-6), places=6)


class AdamWTest(unittest.TestCase):
    def test_f32_equals_torch_adamw(self):
        g = torch.Generator().manual_seed(1)
        a = torch.randn(50, generator=g)
        b = a.clone()
        ours = AdamW([a], lambda t: 1e-2 * (t + 1) / 5, weight_decay=0.1)
        ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1)
        for t in range(5):
            grad = torch.randn(50, generator=g)
            a.grad, b.grad = grad.clone(), grad.clone()
            for group in ref.param_groups:
                group["lr"] = 1e-2 * (t + 1) / 5
            ours.step()
            ref.step()
        self.assertLess(float((a - b).abs().max()), 1e-6)

    def test_nearest_code_is_the_argmin_with_ties_to_the_lower_code(self):
        for qmap in (MAP_SIGNED, MAP_UNSIGNED):
            x = torch.cat([torch.rand(2000) * 2 - 1, qmap, (qmap[1:] + qmap[:-1]) / 2])
            d = (x[:, None] - qmap[None, :]).abs()
            want = torch.where(d == d.min(1, keepdim=True).values, torch.arange(256), 999).min(1).values
            self.assertTrue(torch.equal(nearest_code(qmap, x).long(), want))

    def test_blockwise_error_is_within_half_a_code_gap(self):
        x = torch.randn(1000) * torch.logspace(-4, 0, 1000)
        q = quantize(x, MAP_SIGNED)
        back = dequantize(q, MAP_SIGNED)
        gap = (MAP_SIGNED[1:] - MAP_SIGNED[:-1]).max()
        for b in range(4):
            s = slice(256 * b, 256 * (b + 1))
            self.assertLessEqual(float((back[s] - x[s]).abs().max()), float(gap * q.absmax[b] / 2) + 1e-7)

    def test_eight_bit_follows_f32_adam_closely(self):
        g = torch.Generator().manual_seed(2)
        a = torch.randn(8192, generator=g)
        b = a.clone()
        o8, o32 = AdamW([a], lambda t: 1e-3, eight_bit=True), AdamW([b], lambda t: 1e-3)
        for _ in range(5):
            grad = torch.randn(8192, generator=g)
            a.grad, b.grad = grad.clone(), grad.clone()
            o8.step()
            o32.step()
        self.assertLess(float((a - b).abs().max()), 1e-3 * 5 * 0.1)


class RngTest(unittest.TestCase):
    def test_permutations_are_permutations_and_seeded(self):
        p = permutation(1000, 5)
        self.assertEqual(sorted(p), list(range(1000)))
        self.assertEqual(p, permutation(1000, 5))
        self.assertNotEqual(p, permutation(1000, 6))
        r = Rng(2**40 + 3)
        self.assertTrue(all(0 <= r.next_int(7) < 7 for _ in range(100)))


if __name__ == "__main__":
    unittest.main()

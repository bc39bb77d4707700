"""Loss math of ra3_megatron.core.losses against hand computations."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from ra3_megatron.core.losses import (  # noqa: E402
    latent_aware_ce,
    policy_gradient_loss,
    ratio_of,
    token_cross_entropy,
)

pytestmark = pytest.mark.unit


def test_latent_aware_ce_splits_classes_and_weights_latents():
    ce = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 9.0, 2.5]])
    classes = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1]])  # the 9.0 is masked out
    out = latent_aware_ce(ce, classes, mask, latent_weight=0.25)
    code = 1.0 + 4.0 + 1.5
    latent = 2.0 + 3.0 + 0.5 + 2.5
    assert out.loss_sum.item() == pytest.approx(code + 0.25 * latent)
    assert int(out.num_tokens) == 7
    assert out.stats["code ce"].tolist() == pytest.approx([code, 3])
    assert out.stats["latent ce"].tolist() == pytest.approx([latent, 4])
    assert ratio_of(out.stats["code ce"]) == pytest.approx(code / 3)
    assert ratio_of(out.stats["lm loss"]) == pytest.approx((code + 0.25 * latent) / 7)


def test_latent_weight_one_is_plain_ntp_and_zero_drops_latent_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    classes = torch.randint(0, 2, (2, 5))
    mask = torch.ones(2, 5)
    ce = token_cross_entropy(logits, labels)
    ntp = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1))
    one = latent_aware_ce(ce, classes, mask, latent_weight=1.0)
    assert (one.loss_sum / one.num_tokens).item() == pytest.approx(ntp.item(), rel=1e-6)

    zero = latent_aware_ce(ce, classes, mask, latent_weight=0.0)
    (grad,) = torch.autograd.grad(zero.loss_sum, logits)
    latent_rows = grad[classes == 1]
    assert latent_rows.abs().max().item() == 0.0
    assert grad[classes == 0].abs().max().item() > 0.0
    assert int(zero.num_tokens) == 10  # the denominator keeps the latent tokens


def test_masked_positions_may_hold_nan():
    ce = torch.tensor([[1.0, float("nan"), float("inf")]])
    out = latent_aware_ce(ce, torch.tensor([[0, 1, 0]]), torch.tensor([[1, 0, 0]]))
    assert out.loss_sum.item() == 1.0 and int(out.num_tokens) == 1
    assert math.isnan(ratio_of(out.stats["latent ce"]))  # no latent token: mean undefined


def test_latent_aware_ce_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        latent_aware_ce(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3))


def test_token_cross_entropy_matches_log_softmax():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]])
    labels = torch.tensor([[2, 1]])
    expected = [
        -(2.0 - math.log(1 + math.e + math.e**2)),
        -(0.0 - math.log(math.e**3 + 2)),
    ]
    assert token_cross_entropy(logits, labels)[0].tolist() == pytest.approx(expected)


def _hand_ppo(logp, old, adv, eps):
    r = math.exp(logp - old)
    return max(-adv * r, -adv * min(max(r, 1 - eps), 1 + eps)), r


def test_policy_gradient_loss_clipping_against_hand_values():
    logp = torch.tensor([[-1.0, -0.5, -2.0, -0.1]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0, -1.0, -3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 2.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = policy_gradient_loss(logp, old, adv, mask, clip_eps=0.2)
    terms = [_hand_ppo(a, b, c, 0.2) for a, b, c in zip([-1.0, -0.5, -2.0], [-1.0] * 3, [1.0, 1.0, -1.0])]
    # token 0: r=1, unclipped; token 1: r=e^0.5>1.2 with A>0 -> clipped to -1.2;
    # token 2: r=e^-1<0.8 with A<0 -> clipped to 0.8.
    assert terms[1][0] == pytest.approx(-1.2) and terms[2][0] == pytest.approx(0.8)
    assert out.loss_sum.item() == pytest.approx(sum(t for t, _ in terms))
    assert int(out.num_tokens) == 3
    assert out.stats["clip frac"].tolist() == pytest.approx([2, 3])
    assert out.stats["ratio"][0].item() == pytest.approx(sum(r for _, r in terms))
    (grad,) = torch.autograd.grad(out.loss_sum, logp)
    # Clipped tokens and masked tokens get no gradient; the unclipped one gets -A * r = -1.
    assert grad[0].tolist() == pytest.approx([-1.0, 0.0, 0.0, 0.0])


def test_policy_gradient_loss_k3_kl_and_sequence_advantages():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    out = policy_gradient_loss(
        logp, logp.detach(), torch.tensor([0.5]), torch.ones(1, 2), kl_coef=0.1, ref_logprobs=ref
    )
    k3 = [math.exp(d) - d - 1 for d in (-0.5, 1.0)]
    assert out.stats["kl"].tolist() == pytest.approx([sum(k3), 2])
    assert out.loss_sum.item() == pytest.approx(2 * -0.5 + 0.1 * sum(k3))
    (grad,) = torch.autograd.grad(out.loss_sum, logp)
    # d/dlogp [-A exp(logp-old)] = -A at r=1; d/dlogp k3 = 1 - exp(ref - logp).
    expected = [-0.5 + 0.1 * (1 - math.exp(d)) for d in (-0.5, 1.0)]
    assert grad[0].tolist() == pytest.approx(expected)


def test_policy_gradient_loss_needs_ref_for_kl():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_gradient_loss(x, x, x, torch.ones(1, 2), kl_coef=0.1)

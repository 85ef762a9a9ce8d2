"""Gaps in the loss tests found by mutation testing (tests/MUTATION.md): the InfoNCE loss without a bias,
term names and weights below one, raw token distillation, and the messages for missing inputs."""
from __future__ import annotations

import math
import re

import pytest
import torch

from toklip_plugin.train.config import LossSection
from toklip_plugin.train.losses import TokLIPLoss

IMG = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0], [3.0, 0.0, -1.0]]
TXT = [[0.5, 1.0, 1.0], [1.0, -2.0, 0.0], [2.0, 0.5, -0.5]]
TEACHER = [[1.0, 1.0, 1.0], [0.0, 0.5, 0.0], [2.0, 0.0, 0.0]]
SCALE = 5.0  # exp(logit_scale)


def _unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in row))
    return [v / norm for v in row]


def _infonce_by_hand() -> float:
    """Mean of the image->text and text->image cross-entropies of ``SCALE * cos``, the diagonal the targets."""
    img, txt = [_unit(r) for r in IMG], [_unit(r) for r in TXT]
    logits = [[SCALE * sum(a * b for a, b in zip(i, t)) for t in txt] for i in img]

    def cross_entropy(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[k] for k, row in enumerate(rows)) / len(rows)

    return (cross_entropy(logits) + cross_entropy([list(c) for c in zip(*logits)])) / 2


def _distill_by_hand() -> float:
    """Element mean of the squared difference of the l2-normalised pooled embeddings."""
    return sum((a - b) ** 2 for s, t in zip(IMG, TEACHER) for a, b in zip(_unit(s), _unit(t))) / 9


def _terms(config: LossSection, logit_bias=None, **tensors) -> dict[str, torch.Tensor]:
    return TokLIPLoss(config)(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(math.log(SCALE)), logit_bias,
                              **tensors)


def test_infonce_loss_needs_no_logit_bias():
    # the paper's model has no logit_bias: InfoNCE must work without one
    terms = _terms(LossSection(contrastive="infonce", distill_weight=0.0), logit_bias=None)
    assert terms["total"].item() == pytest.approx(_infonce_by_hand(), rel=1e-5)


def test_contrastive_term_is_reported_under_its_name_and_scaled_by_its_weight():
    terms = _terms(LossSection(contrastive="infonce", contrastive_weight=0.5, distill_weight=3.0),
                   teacher_emb=torch.tensor(TEACHER))
    assert set(terms) == {"contrastive", "distill", "total"}
    assert terms["contrastive"].item() == pytest.approx(0.5 * _infonce_by_hand(), rel=1e-5)
    assert terms["distill"].item() == pytest.approx(3.0 * _distill_by_hand(), rel=1e-5)
    assert terms["total"].item() == pytest.approx(0.5 * _infonce_by_hand() + 3.0 * _distill_by_hand(), rel=1e-5)


def test_a_distillation_weight_below_one_still_adds_the_term():
    terms = _terms(LossSection(contrastive="none", distill_weight=0.25), teacher_emb=torch.tensor(TEACHER))
    assert terms["distill"].item() == pytest.approx(0.25 * _distill_by_hand(), rel=1e-6)


def test_raw_token_distillation_is_the_plain_mean_squared_error():
    # token_distill_normalize: false is the official DistillClipLoss: no l2-normalisation of the tokens
    tokens = torch.tensor([[[1.0, 2.0], [0.0, -1.0], [3.0, 1.0], [2.0, 2.0]]])
    teacher_tokens = torch.tensor([[[0.0, 2.0], [1.0, 1.0], [3.0, -1.0], [0.5, 2.0]]])
    squares = [(1.0 - 0.0) ** 2, 0.0, (0.0 - 1.0) ** 2, (-1.0 - 1.0) ** 2, 0.0, (1.0 + 1.0) ** 2, 1.5 ** 2, 0.0]
    terms = _terms(LossSection(contrastive="none", distill_weight=0.0, token_distill_weight=10.0,
                               token_distill_normalize=False), tokens=tokens, teacher_tokens=teacher_tokens)
    assert terms["token_distill"].item() == pytest.approx(10.0 * sum(squares) / 8, rel=1e-6)


TOKENS = torch.ones(1, 4, 2)


@pytest.mark.parametrize("config,tensors,message", [
    (LossSection(contrastive="none", distill_weight=1.0), {},
     "distill_weight > 0 needs the teacher's pooled embedding"),
    (LossSection(contrastive="none", distill_weight=0.0, token_distill_weight=1.0), {"teacher_tokens": TOKENS},
     "token_distill_weight > 0 needs the student's tokens"),
    (LossSection(contrastive="none", distill_weight=0.0, token_distill_weight=1.0), {"tokens": TOKENS},
     "token_distill_weight > 0 needs the teacher's tokens"),
    (LossSection(contrastive="sigmoid", distill_weight=0.0), {},
     ("loss.contrastive 'sigmoid' needs a model with a logit_bias: set init_logit_bias (SigLIP uses -10) in the "
      "model config, or train with loss.contrastive 'infonce'")),
    (LossSection(contrastive="none", distill_weight=0.0), {},
     "the loss has no terms: set loss.contrastive or a distillation weight"),
])
def test_a_missing_input_is_refused_with_the_setting_that_needs_it_and_the_fix(config, tensors, message):
    # the whole message, case included: it is what the user reads to fix the config
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _terms(config, **tensors)

"""The training losses against hand computations, and across 2 gloo ranks against one process."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from toklip_plugin.train.config import LossSection
from toklip_plugin.models.teacher import resample_token_grid
from toklip_plugin.train.losses import TokLIPLoss


def _unit(rows):
    return [[x / math.sqrt(sum(v * v for v in row)) for x in row] for row in rows]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


IMG = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0], [3.0, 0.0, -1.0]]
TXT = [[0.5, 1.0, 1.0], [1.0, -2.0, 0.0], [2.0, 0.5, -0.5]]
SCALE, BIAS = math.log(5.0), -2.0


def _loss(terms_kwargs, **tensors):
    loss = TokLIPLoss(LossSection(**terms_kwargs))
    return loss(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(SCALE), torch.tensor(BIAS), **tensors)


def test_sigmoid_loss_matches_hand_computation():
    img, txt = _unit(IMG), _unit(TXT)
    expected = 0.0
    for i in range(3):
        for j in range(3):
            z = 5.0 * _dot(img[i], txt[j]) - 2.0
            label = 1.0 if i == j else -1.0
            expected += math.log(1 + math.exp(-label * z))
    expected /= 3
    terms = _loss({"contrastive": "sigmoid", "distill_weight": 0.0})
    assert terms["total"].item() == pytest.approx(expected, rel=1e-5)


def test_infonce_loss_matches_hand_computation_and_ignores_bias():
    img, txt = _unit(IMG), _unit(TXT)
    logits = [[5.0 * _dot(img[i], txt[j]) for j in range(3)] for i in range(3)]

    def cross_entropy(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / len(rows)

    expected = (cross_entropy(logits) + cross_entropy([list(col) for col in zip(*logits)])) / 2
    terms = _loss({"contrastive": "infonce", "distill_weight": 0.0})
    assert terms["total"].item() == pytest.approx(expected, rel=1e-5)


def test_distillation_terms_are_weighted_mean_squared_errors_of_unit_vectors():
    teacher = [[1.0, 1.0, 1.0], [0.0, 0.5, 0.0], [2.0, 0.0, 0.0]]
    expected = sum((a - b) ** 2 for r, t in zip(_unit(IMG), _unit(teacher)) for a, b in zip(r, t)) / 9
    tokens = torch.arange(8.0).reshape(1, 4, 2)
    teacher_tokens = torch.ones(1, 4, 2)
    unit_tokens, unit_teacher = _unit(tokens[0].tolist()), _unit(teacher_tokens[0].tolist())
    expected_tokens = sum((a - b) ** 2 for r, t in zip(unit_tokens, unit_teacher) for a, b in zip(r, t)) / 8
    terms = _loss({"contrastive": "none", "distill_weight": 2.0, "token_distill_weight": 0.5},
                  tokens=tokens, teacher_emb=torch.tensor(teacher), teacher_tokens=teacher_tokens)
    assert terms["distill"].item() == pytest.approx(2.0 * expected, rel=1e-6)
    assert terms["token_distill"].item() == pytest.approx(0.5 * expected_tokens, rel=1e-6)
    assert terms["total"].item() == pytest.approx(2.0 * expected + 0.5 * expected_tokens, rel=1e-6)
    assert "contrastive" not in terms


def test_teacher_tokens_are_resampled_to_the_student_grid():
    per_channel = torch.tensor([3.0, -1.0])
    teacher = per_channel.expand(2, 16, 2)  # a constant 4x4 grid resamples to the same constant
    assert torch.allclose(resample_token_grid(teacher, 4), per_channel.expand(2, 4, 2))
    same = torch.randn(2, 9, 3)
    assert resample_token_grid(same, 9) is same
    with pytest.raises(ValueError, match="square"):
        resample_token_grid(torch.randn(1, 6, 2), 4)


def test_loss_without_terms_is_an_error():
    with pytest.raises(ValueError, match="no terms"):
        _loss({"contrastive": "none", "distill_weight": 0.0})


# two ranks == one process -----------------------------------------------------------------------
def _rank_worker(rank: int, world: int, init_file: str, kind: str, impl: str, data: dict, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = data["img"].shape[0] // world
    img = data["img"][rank * n:(rank + 1) * n].clone().requires_grad_(True)
    txt = data["txt"][rank * n:(rank + 1) * n].clone().requires_grad_(True)
    scale, bias = data["scale"].clone().requires_grad_(True), data["bias"].clone().requires_grad_(True)
    loss = TokLIPLoss(LossSection(contrastive=kind, distill_weight=0.0, sigmoid_dist_impl=impl), rank, world)
    value = loss(img, txt, scale, bias)["total"]
    (value / world).backward()  # DDP averages over ranks
    for grad in (scale.grad, bias.grad):
        if grad is not None:  # InfoNCE has no bias
            dist.all_reduce(grad)
    out[rank] = {"loss": value.detach(), "img": img.grad, "txt": txt.grad, "scale": scale.grad, "bias": bias.grad}
    dist.destroy_process_group()


@pytest.mark.parametrize("kind,impl", [("sigmoid", "gather"), ("sigmoid", "bidir"), ("infonce", "gather")])
def test_two_rank_loss_and_gradients_equal_single_process_on_concatenated_batch(tmp_path, kind, impl):
    gen = torch.Generator().manual_seed(0)
    data = {"img": torch.randn(6, 5, generator=gen), "txt": torch.randn(6, 5, generator=gen),
            "scale": torch.tensor(2.0), "bias": torch.tensor(-3.0)}
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_rank_worker, args=(2, str(tmp_path / "init"), kind, impl, data, out), nprocs=2,
                           start_method="spawn")
        out = dict(out)
    img, txt = data["img"].clone().requires_grad_(True), data["txt"].clone().requires_grad_(True)
    scale, bias = data["scale"].clone().requires_grad_(True), data["bias"].clone().requires_grad_(True)
    single = TokLIPLoss(LossSection(contrastive=kind, distill_weight=0.0))(img, txt, scale, bias)["total"]
    single.backward()
    mean_loss = (out[0]["loss"] + out[1]["loss"]) / 2
    torch.testing.assert_close(mean_loss, single.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([out[0]["img"], out[1]["img"]]), img.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([out[0]["txt"], out[1]["txt"]]), txt.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[0]["scale"], scale.grad, rtol=1e-5, atol=1e-7)
    if kind == "sigmoid":
        torch.testing.assert_close(out[0]["bias"], bias.grad, rtol=1e-5, atol=1e-7)

"""The paper's objective: InfoNCE (against a hand computation and open_clip's ClipLoss; over two gloo ranks
against one process), the logit-scale clamp, and the l2-normalised distillation terms."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from open_clip.loss import ClipLoss

import toklip_plugin as tp
from toklip_plugin.train.config import LossSection
from toklip_plugin.train.losses import LOGIT_SCALE_MAX, TokLIPLoss, clamp_logit_scale


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _hand_infonce(img: list[list[float]], txt: list[list[float]], scale: float) -> float:
    """Symmetric softmax cross-entropy over ``scale * cos``, in plain Python."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    img, txt = [unit(v) for v in img], [unit(v) for v in txt]
    logits = [[scale * sum(a * b for a, b in zip(i, t)) for t in txt] for i in img]

    def ce(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[k] for k, row in enumerate(rows)) / len(rows)

    return (ce(logits) + ce([list(col) for col in zip(*logits)])) / 2


def test_infonce_equals_a_hand_computation_and_open_clips_clip_loss():
    img, txt, log_scale = _rand(5, 7, seed=1), _rand(5, 7, seed=2), torch.tensor(math.log(20.0))
    loss = TokLIPLoss(LossSection(contrastive="infonce", distill_weight=0.0))
    ours = loss(img, txt, log_scale)["total"]
    assert ours.item() == pytest.approx(_hand_infonce(img.tolist(), txt.tolist(), 20.0), rel=1e-6)
    reference = ClipLoss()(torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1),
                           log_scale.exp())
    torch.testing.assert_close(ours, reference)


def test_infonce_ignores_a_bias_and_sigmoid_refuses_a_model_without_one():
    img, txt, log_scale = _rand(4, 3, seed=1), _rand(4, 3, seed=2), torch.tensor(1.0)
    infonce = TokLIPLoss(LossSection(contrastive="infonce", distill_weight=0.0))
    torch.testing.assert_close(infonce(img, txt, log_scale, torch.tensor(-5.0))["total"],
                               infonce(img, txt, log_scale, None)["total"])
    with pytest.raises(ValueError, match="init_logit_bias"):
        TokLIPLoss(LossSection(contrastive="sigmoid", distill_weight=0.0))(img, txt, log_scale, None)


def test_paper_defaults_are_infonce_and_1000_times_the_normalised_distillation():
    config = LossSection()
    assert (config.contrastive, config.distill_weight, config.token_distill_weight) == ("infonce", 1000.0, 0.0)


def test_pooled_distillation_is_1000_times_the_mean_squared_difference_of_unit_vectors():
    student, teacher = _rand(3, 4, seed=3), _rand(3, 4, seed=4) * 5.0  # the teacher's scale must not matter
    expected = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        ns, nt = math.sqrt(sum(x * x for x in s)), math.sqrt(sum(x * x for x in t))
        expected += sum((a / ns - b / nt) ** 2 for a, b in zip(s, t))
    expected = 1000.0 * expected / student.numel()
    terms = TokLIPLoss(LossSection(contrastive="none"))(student, None, None, teacher_emb=teacher)
    assert terms["distill"].item() == pytest.approx(expected, rel=1e-5)


def test_all_token_distillation_normalises_each_token_or_none_as_the_official_code():
    tokens, teacher = _rand(2, 4, 3, seed=5), _rand(2, 4, 3, seed=6) * 3.0
    flat_s, flat_t = tokens.reshape(-1, 3).tolist(), teacher.reshape(-1, 3).tolist()
    per_token = []
    for s, t in zip(flat_s, flat_t):
        ns, nt = math.sqrt(sum(x * x for x in s)), math.sqrt(sum(x * x for x in t))
        per_token.append(sum((a / ns - b / nt) ** 2 for a, b in zip(s, t)))
    normalised = 2.0 * sum(per_token) / tokens.numel()
    raw = 10.0 * sum((a - b) ** 2 for s, t in zip(flat_s, flat_t) for a, b in zip(s, t)) / tokens.numel()
    common = {"contrastive": "none", "distill_weight": 0.0}
    got = TokLIPLoss(LossSection(**common, token_distill_weight=2.0))(None, None, None, tokens=tokens,
                                                                      teacher_tokens=teacher)
    assert got["token_distill"].item() == pytest.approx(normalised, rel=1e-5)
    got = TokLIPLoss(LossSection(**common, token_distill_weight=10.0, token_distill_normalize=False))(
        None, None, None, tokens=tokens, teacher_tokens=teacher)
    assert got["token_distill"].item() == pytest.approx(raw, rel=1e-5)


def test_distillation_sends_no_gradient_into_the_teacher():
    student, teacher = _rand(3, 4, seed=7).requires_grad_(), _rand(3, 4, seed=8).requires_grad_()
    tokens, teacher_tokens = _rand(3, 4, 4, seed=9).requires_grad_(), _rand(3, 4, 4, seed=10).requires_grad_()
    loss = TokLIPLoss(LossSection(contrastive="none", token_distill_weight=1.0))
    loss(student, None, None, tokens=tokens, teacher_emb=teacher, teacher_tokens=teacher_tokens)["total"].backward()
    assert student.grad is not None and tokens.grad is not None
    assert teacher.grad is None and teacher_tokens.grad is None


def test_the_clamp_holds_after_a_step_that_pushes_the_logit_scale_past_ln_100(tiny_model):
    model = tiny_model.train()
    optimizer = torch.optim.AdamW([model.logit_scale], lr=1.0, weight_decay=0.0)
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE_MAX - 0.1)
    (-model.logit_scale).backward()  # pushes the scale up
    optimizer.step()
    assert model.logit_scale.item() > math.log(100)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100), abs=1e-7)
    with torch.no_grad():
        model.logit_scale.fill_(-0.5)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 0.0


def test_an_infonce_model_has_no_logit_bias_and_its_logits_are_scaled_cosines():
    model = tp.create_model(tp.resolve_config("toklip-tiny").replace(init_logit_bias=None), seed=0)
    assert model.logit_bias is None and "logit_bias" not in model.state_dict()
    img, txt = _rand(2, 64, seed=11), _rand(3, 64, seed=12)
    cos = torch.nn.functional.cosine_similarity(img[:, None], txt[None], dim=-1)
    torch.testing.assert_close(model.logits(img, txt), model.logit_scale.exp() * cos)


# two ranks == one process, with distillation -----------------------------------------------------------
def _objective_worker(rank: int, world: int, init_file: str, data: dict, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = data["img"].shape[0] // world
    local = {k: v[rank * n:(rank + 1) * n].clone().requires_grad_(k in ("img", "tokens"))
             for k, v in data.items() if k != "scale"}
    scale = data["scale"].clone().requires_grad_(True)
    loss = TokLIPLoss(LossSection(token_distill_weight=3.0), rank, world)
    value = loss(local["img"], local["txt"], scale, None, local["tokens"], local["teacher"],
                 local["teacher_tokens"])["total"]
    (value / world).backward()  # DDP averages the ranks' gradients
    dist.all_reduce(scale.grad)  # the replicated logit scale: summed over ranks, as DDP's mean of the halves
    out[rank] = {"loss": value.detach(), "img": local["img"].grad, "tokens": local["tokens"].grad,
                 "scale": scale.grad}
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch_with_distillation(tmp_path):
    data = {"img": _rand(6, 5, seed=1), "txt": _rand(6, 5, seed=2), "teacher": _rand(6, 5, seed=3),
            "tokens": _rand(6, 4, 5, seed=4), "teacher_tokens": _rand(6, 4, 5, seed=5), "scale": torch.tensor(2.5)}
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_objective_worker, args=(2, str(tmp_path / "init"), data, out), nprocs=2,
                           start_method="spawn")
        out = dict(out)
    img, tokens = data["img"].clone().requires_grad_(True), data["tokens"].clone().requires_grad_(True)
    scale = data["scale"].clone().requires_grad_(True)
    single = TokLIPLoss(LossSection(token_distill_weight=3.0))(img, data["txt"], scale, None, tokens,
                                                               data["teacher"], data["teacher_tokens"])["total"]
    single.backward()
    torch.testing.assert_close((out[0]["loss"] + out[1]["loss"]) / 2, single.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([out[0]["img"], out[1]["img"]]), img.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([out[0]["tokens"], out[1]["tokens"]]), tokens.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[0]["scale"], scale.grad, rtol=1e-5, atol=1e-7)

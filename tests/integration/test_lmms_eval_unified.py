"""A unified LLaVA-Qwen2 checkpoint (issue 14) runs in lmms-eval as ``toklip_llava``: chat and simple interfaces.

The checkpoint is a tiny saved unified model with a toklip-tiny tower (``helpers.unified_checkpoint``). The
requests are lmms-eval's own, built by its task classes from ``eval/lmms_tasks/toklip_pope_mini``; the
expected answers come from the model's own ``generate`` on the prompt written out by hand in the ``qwen_2``
template and the doc's image as LLaVA preprocesses it, and the expected log-likelihood from LLaVA's own
splice (``prepare_inputs_labels_for_multimodal``) instead of the unified model's.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers.unified_checkpoint import save_tiny_unified

pytestmark = pytest.mark.slow

TASKS = Path(__file__).resolve().parents[2] / "eval" / "lmms_tasks"
TASK = "toklip_pope_mini"
POST_PROMPT = "\nAnswer the question using a single word or phrase."  # the task's lmms_eval_specific_kwargs
DOCS = 3


def docs() -> list[dict]:
    return [json.loads(line) for line in (TASKS / TASK / "test.jsonl").read_text().splitlines()]


def doc_image(doc: dict):
    from PIL import Image

    with Image.open(TASKS / TASK / doc["image"]) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_unified(tmp_path_factory.mktemp("unified"))


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS), include_defaults=False, model_name="toklip_llava")


def lmms_model(checkpoint: Path, kind: str, task_manager):
    """``toklip_llava``'s class for ``kind`` ("chat" or "simple") on the checkpoint, with lmms-eval's task built
    for that interface and its first docs' requests."""
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.tasks import get_task_dict

    cls = MODEL_REGISTRY_V2.get_model_class("toklip_llava", force_simple=kind == "simple")
    model = cls(pretrained=str(checkpoint), device="cpu")
    task = get_task_dict([TASK], task_manager, kind)[TASK]
    task.build_all_requests(limit=DOCS, rank=0, world_size=1)
    model.task_dict = {TASK: task.dataset}
    return model, task


def hand_written_prompt(doc: dict) -> str:
    """The task's question for ``doc`` as one user turn of LLaVA's ``qwen_2`` template, the image first."""
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
            f"{doc['question']}{POST_PROMPT}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def own_answer(checkpoint):
    """``own_answer(doc, max_new_tokens) -> (prompt ids, answer)``: the unified model's own greedy answer, cut
    at the task's ``until`` ("\n")."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images, tokenizer_image_token

    from toklip_plugin.integrations.llava import load_llava_model

    tokenizer, model, processor, _ = load_llava_model(checkpoint, device="cpu")

    def answer(doc: dict, max_new_tokens: int) -> tuple[torch.Tensor, str]:
        ids = tokenizer_image_token(hand_written_prompt(doc), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        image = doc_image(doc)
        out = model.generate(ids, images=process_images([image], processor, model.config), image_sizes=[image.size],
                             do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
        return ids, tokenizer.decode(out[0], skip_special_tokens=True).split("\n")[0].strip()

    return answer


def spy_on_generate(monkeypatch, model) -> list[dict]:
    """Record the input ids and keyword arguments of every ``model.model.generate`` call, passing it on."""
    calls, real = [], model.model.generate

    def recording(inputs, **kwargs):
        calls.append({"input_ids": inputs, **kwargs})
        return real(inputs, **kwargs)

    monkeypatch.setattr(model.model, "generate", recording)
    return calls


@pytest.mark.parametrize("kind", ["chat", "simple"])
def test_toklip_llava_answers_a_unified_checkpoint_as_the_models_own_generate_does(checkpoint, task_manager,
                                                                                  own_answer, monkeypatch, kind):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images

    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedForCausalLM

    model, task = lmms_model(checkpoint, kind, task_manager)
    assert type(model.model) is LlavaQwen2UnifiedForCausalLM and model.conv_template == "qwen_2"
    assert model.model.config.has_generation  # the image head came back with the checkpoint
    requests = sorted(task.instances, key=lambda r: r.doc_id)
    lengths = [2, 6, 4]  # a random tiny LLM may say the same to every doc: answer lengths tell them apart
    for request, n in zip(requests, lengths):
        args = list(request.args)
        args[1 if kind == "simple" else 2] = {**args[1 if kind == "simple" else 2], "max_new_tokens": n}
        request.arguments = tuple(args)
    calls = spy_on_generate(monkeypatch, model)
    answers = model.generate_until(requests)
    expected = [own_answer(doc, n) for doc, n in zip(docs(), lengths)]
    assert answers == [answer for _, answer in expected] and len(set(answers)) == DOCS
    for call, doc, (ids, _) in zip(calls, docs(), expected):
        assert call["input_ids"].tolist() == ids.tolist()  # the doc's question in the template
        assert int((call["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 1  # one placeholder, for the doc's image
        image = doc_image(doc)
        assert call["image_sizes"] == [image.size]
        torch.testing.assert_close(call["images"], process_images([image], model.image_processor, model.model.config))


def test_loglikelihood_of_a_unified_checkpoint_equals_llavas_own_splice(checkpoint, task_manager):
    from llava.constants import IMAGE_TOKEN_INDEX
    from lmms_eval.api.instance import Instance

    model, task = lmms_model(checkpoint, "simple", task_manager)
    doc, continuation = docs()[0], " yes it is"
    visuals = [doc_image(doc)]
    request = Instance("loglikelihood", (doc["question"], continuation, task.doc_to_visual, 0, TASK, "test"), idx=0,
                       metadata={"task": TASK, "doc_id": 0, "repeats": 1})
    (logprob, greedy), = model.loglikelihood([request])
    cont = model.tokenizer.encode(continuation, add_special_tokens=False)
    ids = torch.cat([model._prompt_ids(doc["question"], visuals), torch.tensor([cont])], dim=1)
    assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 1
    images = model._image_inputs(visuals)["images"]
    with torch.no_grad():
        *_, embeds, _ = model.model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images)
        logits = model.model(inputs_embeds=embeds).logits[0, -len(cont) - 1:-1].log_softmax(-1)
    expected = logits.gather(1, torch.tensor(cont)[:, None]).sum().item()
    assert logprob == pytest.approx(expected, abs=1e-4) and logprob < 0
    assert greedy == bool((logits.argmax(-1) == torch.tensor(cont)).all())


def test_lmms_evals_evaluator_scores_the_unified_checkpoint_from_its_own_answers(checkpoint, task_manager,
                                                                                own_answer):
    from lmms_eval.evaluator import simple_evaluate

    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    spec = importlib.util.spec_from_file_location("toklip_pope_mini_utils", TASKS / TASK / "utils.py")
    hooks = importlib.util.module_from_spec(spec)  # the task's own scoring (POPE's yes/no reduction)
    spec.loader.exec_module(hooks)
    model = TokLIPLlava(pretrained=str(checkpoint), device="cpu")
    results = simple_evaluate(model=model, tasks=[TASK], limit=DOCS, task_manager=task_manager, batch_size=1)
    answers = [own_answer(doc, 8)[1] for doc in docs()[:DOCS]]  # the task's max_new_tokens
    expected = sum(hooks.to_yes_no(a) == d["answer"] for a, d in zip(answers, docs())) / DOCS
    assert results["results"][TASK]["accuracy,none"] == pytest.approx(expected)

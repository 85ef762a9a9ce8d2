"""lmms-eval (the real package) with ``toklip_llava``: entry-point discovery, the lmms API, a CLI run.

The LLaVA checkpoints are built the way LLaVA's ``train.py`` builds one before training (a tiny
random Llama or Qwen2 LLM from ``llava_fixtures``, ``initialize_vision_modules`` with ``--vision_tower
toklip-tiny``, the config fields ``train.py`` sets) and saved without its tower weights, as
LLaVA saves a model whose tower is frozen.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.llava_fixtures import build_tiny_llm, require_patched_llava

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "eval" / "lmms_tasks"
TASK = "toklip_pope_mini"


def build_checkpoint(kind: str, root: Path) -> Path:
    require_patched_llava()
    from llava.model import LlavaLlamaForCausalLM
    from transformers import AutoTokenizer

    from toklip_plugin.integrations.llava.qwen2 import LlavaQwen2ForCausalLM

    llm = build_tiny_llm(kind, root / f"tiny-{kind}")
    model = {"llama": LlavaLlamaForCausalLM, "qwen2": LlavaQwen2ForCausalLM}[kind].from_pretrained(llm)
    model.get_model().initialize_vision_modules(SimpleNamespace(
        vision_tower="toklip-tiny", mm_vision_select_layer=-1, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="flat"))
    model.config.update(dict(image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False,
                             tokenizer_padding_side="right"))
    out = root / f"llava-{kind}-toklip-tiny"
    model.save_pretrained(out, state_dict={k: v for k, v in model.state_dict().items() if "vision_tower" not in k})
    AutoTokenizer.from_pretrained(llm, use_fast=False).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``checkpoints(kind)``: a tiny LLaVA with a toklip-tiny tower and a Llama or Qwen2 LLM (built once)."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = build_checkpoint(kind, tmp_path_factory.mktemp(f"lmms-{kind}"))
        return built[kind]

    return get


def docs() -> list[dict]:
    return [json.loads(line) for line in (TASKS / TASK / "test.jsonl").read_text().splitlines()]


def test_lmms_eval_finds_toklip_llava_through_its_entry_point():
    assert "toklip_llava" in {ep.name for ep in entry_points(group="lmms_eval.models")}
    from lmms_eval.models import MODEL_REGISTRY_V2

    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    assert MODEL_REGISTRY_V2.get_model_class("toklip_llava") is TokLIPLlava


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def lmm(request, checkpoints):
    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    model = TokLIPLlava(pretrained=str(checkpoints(request.param)), device="cpu", batch_size="1")
    assert model.conv_template == {"llama": "vicuna_v1", "qwen2": "qwen_2"}[request.param]
    spec = importlib.util.spec_from_file_location("toklip_pope_mini_utils", TASKS / TASK / "utils.py")
    task_utils = importlib.util.module_from_spec(spec)  # the task's own hooks, as lmms-eval loads them
    spec.loader.exec_module(task_utils)
    model.task_dict = {TASK: {"test": docs()}}
    return model, task_utils


def request(kind: str, args: tuple, doc_id: int):
    from lmms_eval.api.instance import Instance

    return Instance(kind, args, idx=0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def generate(model, task, doc_id: int, **kwargs) -> list[str]:
    args = (docs()[doc_id]["question"], {"max_new_tokens": 6, "temperature": 0, "do_sample": False, **kwargs},
            task.doc_to_visual, doc_id, TASK, "test")
    return model.generate_until([request("generate_until", args, doc_id)])


def test_generate_until_answers_in_request_order(lmm):
    model, task = lmm
    # a random tiny LLM may say the same thing to every prompt: different lengths tell the answers apart
    lengths = {2: 6, 0: 2, 1: 4}
    reqs = [request("generate_until", (docs()[i]["question"], {"max_new_tokens": n, "temperature": 0, "until": []},
                                       task.doc_to_visual, i, TASK, "test"), i) for i, n in lengths.items()]
    answers = model.generate_until(reqs)
    assert len(set(answers)) == 3
    assert [model.generate_until([r])[0] for r in reqs] == answers


def test_generation_stops_at_the_first_until_string(lmm):
    model, task = lmm
    full, = generate(model, task, 0, until=[])
    assert len(full) >= 3
    stop = full[len(full) // 2:][:2]
    assert generate(model, task, 0, until=[stop]) == [full.split(stop)[0].strip()]


def test_loglikelihood_is_the_sum_of_the_continuation_token_log_probabilities(lmm):
    model, task = lmm
    context, continuation = "Is there a red circle in the image?", " yes it is"
    (logprob, greedy), = model.loglikelihood(
        [request("loglikelihood", (context, continuation, task.doc_to_visual, 0, TASK, "test"), 0)])
    # independently: one forward pass per continuation token, reading the last position's logits
    visuals = task.doc_to_visual(docs()[0])
    ids = model._prompt_ids(context, visuals)
    images = model._image_inputs(visuals)
    expected, all_greedy = 0.0, True
    with torch.no_grad():
        for token in model.tokenizer.encode(continuation, add_special_tokens=False):
            last = model.model(input_ids=ids, **images).logits[0, -1].float().log_softmax(-1)
            expected += last[token].item()
            all_greedy &= int(last.argmax()) == token
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert logprob == pytest.approx(expected, abs=1e-4)
    assert logprob < 0 and greedy == all_greedy


def test_multi_round_generation_is_refused_with_a_reason(lmm):
    with pytest.raises(NotImplementedError, match="multi-round"):
        lmm[0].generate_until_multi_round([])


def test_an_unknown_prompt_template_is_named_with_the_known_ones(checkpoints):
    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    with pytest.raises(ValueError, match="conv_template='chatml_v9' is not a LLaVA template; known: .*vicuna_v1"):
        TokLIPLlava(pretrained=str(checkpoints("llama")), device="cpu", conv_template="chatml_v9")


def yes_or_no(text: str) -> str:
    words = text.lower().replace(".", " ").replace(",", " ").split()
    return "no" if "no" in words or "not" in words else "yes"


def test_lmms_eval_command_runs_the_offline_task_and_writes_results(checkpoints, tmp_path):
    checkpoint = checkpoints("llama")
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("lmms-eval")), "eval", "--model", "toklip_llava",
           "--model_args", f"pretrained={checkpoint},device=cpu", "--tasks", TASK, "--include_path", str(TASKS),
           "--batch_size", "1", "--limit", "4", "--output_path", str(out), "--log_samples"]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    results_file, = out.rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["model"] == "toklip_llava" and results["n-samples"][TASK]["effective"] == 4
    samples = [json.loads(line) for f in out.rglob(f"*samples_{TASK}.jsonl") for line in f.read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == [0, 1, 2, 3]
    answers = {d["question_id"]: d["answer"] for d in docs()}
    replies = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"] for s in samples]
    expected = sum(yes_or_no(r) == answers[s["doc_id"]] for r, s in zip(replies, samples)) / 4
    assert results["results"][TASK]["accuracy,none"] == pytest.approx(expected)


# the image reaches the model ----------------------------------------------------------------
def spy_on(monkeypatch, model, method: str) -> list[tuple[tuple, dict]]:
    """Record the arguments of every call to ``model.<method>`` and pass the call on unchanged."""
    calls: list[tuple[tuple, dict]] = []
    real = getattr(model, method)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, method, recording)
    return calls


def assert_one_image_goes_with_the_prompt(model, input_ids: torch.Tensor, kwargs: dict, doc: dict) -> None:
    """Exactly one ``<image>`` placeholder in the ids, and the doc's image (as LLaVA preprocesses it) beside them."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images
    from PIL import Image

    assert int((input_ids == IMAGE_TOKEN_INDEX).sum()) == 1
    with Image.open(TASKS / TASK / doc["image"]) as image:
        image = image.convert("RGB")
    assert kwargs.get("image_sizes") == [image.size]
    expected = process_images([image], model.image_processor, model.model.config)
    torch.testing.assert_close(kwargs.get("images"), expected)


@pytest.mark.parametrize("doc_id", [1, 3])
def test_generate_until_gives_the_model_the_doc_image_with_one_placeholder(lmm, monkeypatch, doc_id):
    model, task = lmm
    calls = spy_on(monkeypatch, model.model, "generate")
    generate(model, task, doc_id, until=[])
    (args, kwargs), = calls
    input_ids = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
    assert_one_image_goes_with_the_prompt(model, input_ids, kwargs, docs()[doc_id])


@pytest.mark.parametrize("doc_id", [0, 2])
def test_loglikelihood_gives_the_model_the_doc_image_with_one_placeholder(lmm, monkeypatch, doc_id):
    model, task = lmm
    calls = spy_on(monkeypatch, model.model, "forward")
    continuation = " yes"
    model.loglikelihood([request("loglikelihood", (docs()[doc_id]["question"], continuation, task.doc_to_visual,
                                                   doc_id, TASK, "test"), doc_id)])
    (args, kwargs), = calls
    input_ids = kwargs["input_ids"]
    cont = model.tokenizer.encode(continuation, add_special_tokens=False)
    assert input_ids[0, -len(cont):].tolist() == cont  # the continuation closes the sequence
    assert_one_image_goes_with_the_prompt(model, input_ids, kwargs, docs()[doc_id])

"""lmms-eval (the real package) with ``toklip_llava``: entry-point discovery, the lmms API, a CLI run.

Requests are lmms-eval's own: its task classes build them from ``eval/lmms_tasks/toklip_pope_mini``
(``ConfigurableMessagesTask`` for the chat interface, ``ConfigurableTask`` for the legacy one).

The LLaVA checkpoints are built the way LLaVA's ``train.py`` builds one before training (a tiny
random Llama or Qwen2 LLM from ``llava_fixtures``, ``initialize_vision_modules`` with ``--vision_tower
toklip-tiny``, the config fields ``train.py`` sets) and saved without its tower weights, as
LLaVA saves a model whose tower is frozen.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
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

    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava, TokLIPLlavaSimple

    # lmms-eval resolves the name to the chat interface, and to the legacy one under --force_simple;
    # get_model_class also checks each class's is_simple against the interface it was resolved as
    assert MODEL_REGISTRY_V2.resolve("toklip_llava").model_type == "chat"
    assert MODEL_REGISTRY_V2.get_model_class("toklip_llava") is TokLIPLlava
    assert MODEL_REGISTRY_V2.get_model_class("toklip_llava", force_simple=True) is TokLIPLlavaSimple


def task_hooks():
    """The task's own ``utils.py`` (``doc_to_visual``, ...), loaded as lmms-eval loads it."""
    spec = importlib.util.spec_from_file_location("toklip_pope_mini_utils", TASKS / TASK / "utils.py")
    task_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task_utils)
    return task_utils


@pytest.fixture(scope="module")
def lmms_tasks(tmp_path_factory):
    """``lmms_tasks(kind)``: lmms-eval's own task object for ``toklip_pope_mini``, ``kind`` "chat" or "simple"."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(TASKS), include_defaults=False, model_name="toklip_llava")
    return lambda kind: get_task_dict([TASK], manager, kind)[TASK]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def lmm(request, checkpoints, lmms_tasks):
    """The chat model (what ``--model toklip_llava`` runs) and lmms-eval's chat task, data loaded as the evaluator loads it."""
    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    model = TokLIPLlava(pretrained=str(checkpoints(request.param)), device="cpu", batch_size="1")
    assert model.conv_template == {"llama": "vicuna_v1", "qwen2": "qwen_2"}[request.param]
    task = lmms_tasks("chat")
    model.task_dict = {TASK: task.dataset}
    return model, task


def request(kind: str, args: tuple, doc_id: int):
    from lmms_eval.api.instance import Instance

    return Instance(kind, args, idx=0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def task_request(task, doc_id: int, gen_kwargs: dict):
    """lmms-eval's own request for a doc (its task builds it), with ``gen_kwargs`` as the generation settings."""
    built = task.construct_requests(doc_id, task.doc_to_text(docs()[doc_id]),
                                    metadata={"task": TASK, "doc_id": doc_id, "repeats": 1, "split": "test"})
    args = list(built.args)
    args[1 if isinstance(args[1], dict) else 2] = gen_kwargs  # legacy: (ctx, gen_kwargs, ...); chat: (ctx, doc_to_messages, gen_kwargs, ...)
    built.arguments = tuple(args)
    return built


def generate(model, task, doc_id: int, **kwargs) -> list[str]:
    gen_kwargs = {"max_new_tokens": 6, "temperature": 0, "do_sample": False, **kwargs}
    return model.generate_until([task_request(task, doc_id, gen_kwargs)])


def test_generate_until_answers_in_request_order(lmm):
    model, task = lmm
    # a random tiny LLM may say the same thing to every prompt: different lengths tell the answers apart
    lengths = {2: 6, 0: 2, 1: 4}
    reqs = [task_request(task, i, {"max_new_tokens": n, "temperature": 0, "until": []}) for i, n in lengths.items()]
    answers = model.generate_until(reqs)
    assert len(set(answers)) == 3
    assert [model.generate_until([r])[0] for r in reqs] == answers


def test_generation_stops_at_the_first_until_string(lmm):
    model, task = lmm
    full, = generate(model, task, 0, until=[])
    assert len(full) >= 3
    stop = full[len(full) // 2:][:2]
    assert generate(model, task, 0, until=[stop]) == [full.split(stop)[0].strip()]


def stepwise_logprob(model, context: str, visuals: list, continuation: str) -> tuple[float, bool]:
    """One forward pass per continuation token, reading the last position's logits: the summed
    log-probability and whether every token is the argmax."""
    ids, images = model._prompt_ids(context, visuals), model._image_inputs(visuals)
    total, all_greedy = 0.0, True
    with torch.no_grad():
        for token in model.tokenizer.encode(continuation, add_special_tokens=False):
            last = model.model(input_ids=ids, **images).logits[0, -1].float().log_softmax(-1)
            total += last[token].item()
            all_greedy &= int(last.argmax()) == token
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return total, all_greedy


def test_loglikelihood_is_the_sum_of_the_continuation_token_log_probabilities(lmm):
    model, task = lmm
    context, continuation = "Is there a red circle in the image?", " yes it is"
    (logprob, greedy), = model.loglikelihood(
        [request("loglikelihood", (context, continuation, task.doc_to_visual, 0, TASK, "test"), 0)])
    expected, all_greedy = stepwise_logprob(model, context, task.doc_to_visual(docs()[0]), continuation)
    assert logprob == pytest.approx(expected, abs=1e-4)
    assert logprob < 0 and greedy == all_greedy


def test_multi_round_generation_is_refused_with_a_reason(lmm):
    message = ("toklip_llava does not implement multi-round generation; "
               "use tasks whose output_type is generate_until or loglikelihood")
    with pytest.raises(NotImplementedError, match=f"^{re.escape(message)}$"):
        lmm[0].generate_until_multi_round([])


def test_an_unknown_prompt_template_is_named_with_the_known_ones(checkpoints):
    from llava.conversation import conv_templates

    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    known = ", ".join(sorted(conv_templates))  # every LLaVA template, in order, comma-separated
    message = f"conv_template='chatml_v9' is not a LLaVA template; known: {known}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
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
    assert results["config"]["model_backend"] == "toklip_plugin.integrations.lmms_eval.model.TokLIPLlava (chat)"
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


# gaps found by mutation testing (tests/MUTATION.md) -----------------------------------------------
def loglikelihood_request(task, context: str, continuation: str, doc_id: int = 0):
    return request("loglikelihood", (context, continuation, task.doc_to_visual, doc_id, TASK, "test"), doc_id)


def steering_head(model, prompt: torch.Tensor, images: dict, cont: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """An LM head under which greedy decoding after ``prompt`` writes ``cont`` (distinct tokens), and the
    head's inputs ``[len(cont), H]`` at the positions that predict them.

    The head's only rows are those inputs, normalised: at step t, token cont[t] scores |h_t|, every other
    continuation token |h_t| cos(h_s, h_t) < |h_t|, the rest of the vocabulary 0.
    """
    assert len(set(cont)) == len(cont)
    seen = []
    hook = model.model.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0][0]))
    with torch.no_grad():
        model.model(input_ids=torch.cat([prompt, torch.tensor([cont])], dim=1), **images)
    hook.remove()
    hidden = seen[0][-len(cont) - 1:-1]
    head = torch.zeros_like(model.model.lm_head.weight)
    head[cont] = torch.nn.functional.normalize(hidden, dim=-1)
    return head, hidden


@contextmanager
def lm_head_weight(model, weight: torch.Tensor):
    """Run with ``weight`` as the LM head, then put the trained one back (the model is shared by the module)."""
    trained = model.model.lm_head.weight
    model.model.lm_head.weight = torch.nn.Parameter(weight)
    try:
        yield
    finally:
        model.model.lm_head.weight = trained


def test_a_continuation_the_model_decodes_greedily_is_reported_greedy(lmm):
    model, task = lmm
    context, visuals = docs()[0]["question"], task.doc_to_visual(docs()[0])
    cont = model.tokenizer.encode(" It shows a red square", add_special_tokens=False)
    assert len(cont) >= 2
    prompt, images = model._prompt_ids(context, visuals), model._image_inputs(visuals)
    head, hidden = steering_head(model, prompt, images, cont)
    with lm_head_weight(model, head), torch.no_grad():
        written = model.model.generate(prompt, **images, do_sample=False, num_beams=1, max_new_tokens=len(cont))
        (logprob, greedy), = model.loglikelihood([loglikelihood_request(task, context, " It shows a red square")])
    assert written[0, -len(cont):].tolist() == cont  # greedy decoding writes the continuation
    logits = hidden @ head.T
    expected = sum(float(logits[t, c] - logits[t].logsumexp(-1)) for t, c in enumerate(cont))
    assert greedy is True
    assert logprob == pytest.approx(expected, abs=1e-4)


def test_an_empty_continuation_is_refused_and_a_one_token_one_is_scored(lmm):
    model, task = lmm
    context = docs()[0]["question"]
    with pytest.raises(ValueError, match=r"^continuation '' encodes to no tokens$"):
        model.loglikelihood([loglikelihood_request(task, context, "")])
    token, = model.tokenizer.encode(" a", add_special_tokens=False)
    (logprob, greedy), = model.loglikelihood([loglikelihood_request(task, context, " a")])
    visuals = task.doc_to_visual(docs()[0])
    with torch.no_grad():
        last = model.model(input_ids=model._prompt_ids(context, visuals),
                           **model._image_inputs(visuals)).logits[0, -1].float().log_softmax(-1)
    assert logprob == pytest.approx(last[token].item(), abs=1e-5)
    assert greedy == (int(last.argmax()) == token)


def adapter_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "toklip_plugin.integrations.lmms_eval.model"]


def test_default_model_args_answer_one_request_at_a_time_on_the_available_device(checkpoints, caplog):
    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    with caplog.at_level("WARNING"):
        model = TokLIPLlava(pretrained=str(checkpoints("llama")))
    assert adapter_warnings(caplog) == []
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert model.device == expected and model.model.device.type == expected.type
    assert model.batch_size == 1
    model.task_dict = {TASK: {"test": docs()}}
    (logprob, _), = model.loglikelihood([loglikelihood_request(task_hooks(), docs()[0]["question"], " yes")])
    assert logprob < 0


def test_ignored_model_args_and_batch_size_are_named_in_warnings(checkpoints, caplog):
    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    with caplog.at_level("WARNING"):
        TokLIPLlava(pretrained=str(checkpoints("llama")), device="cpu", batch_size=4, temperature="0.5", foo="x")
        TokLIPLlava(pretrained=str(checkpoints("llama")), device="cpu", batch_size=1)
    assert adapter_warnings(caplog) == ["toklip_llava ignores model_args ['foo', 'temperature']",
                                        "toklip_llava answers one request at a time; batch_size=4 is ignored"]


def test_dtype_sets_the_weights_dtype_and_a_wrong_name_fails_before_loading(checkpoints, tmp_path):
    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    model = TokLIPLlava(pretrained=str(checkpoints("llama")), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="dtype must be one of .*; got 'float17'"):
        TokLIPLlava(pretrained=str(tmp_path / "no-such-checkpoint"), device="cpu", dtype="float17")


def test_model_base_loads_a_projector_only_checkpoint_over_its_base_llm(checkpoints, tmp_path):
    """LLaVA's pretraining stage saves the projector alone; ``model_base`` names the LLM it goes on."""
    from transformers import AutoModelForCausalLM

    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava

    full = checkpoints("llama")
    base = full.parent / "tiny-llama"
    projector_only = tmp_path / "llava-llama-projector"
    projector_only.mkdir()
    (projector_only / "config.json").write_text((full / "config.json").read_text())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        full_model = TokLIPLlava(pretrained=str(full), device="cpu").model
    projector = {f"model.mm_projector.{k}": torch.randn(v.shape, generator=gen)
                 for k, v in full_model.get_model().mm_projector.state_dict().items()}
    torch.save(projector, projector_only / "mm_projector.bin")
    model = TokLIPLlava(pretrained=str(projector_only), model_base=str(base), device="cpu").model
    loaded = model.state_dict()
    for key, value in projector.items():  # LLaVA passes the projector through float16
        torch.testing.assert_close(loaded[key], value.half().float())
    llm = AutoModelForCausalLM.from_pretrained(base)
    torch.testing.assert_close(loaded["model.embed_tokens.weight"], llm.state_dict()["model.embed_tokens.weight"])


def test_the_answer_leaves_out_the_end_of_sequence_token(lmm):
    model, task = lmm
    doc = docs()[1]
    visuals = task.doc_to_visual(doc)
    word, = model.tokenizer.encode(" a", add_special_tokens=False)
    eos = model.tokenizer.eos_token_id
    head, _ = steering_head(model, model._prompt_ids(task.doc_to_text(doc), visuals), model._image_inputs(visuals),
                            [word, eos])
    with lm_head_weight(model, head):
        answer, = generate(model, task, 1, until=[], max_new_tokens=4)
    assert answer == "a"  # the model wrote " a" then its end-of-sequence token


def spied_generate_kwargs(model, task, monkeypatch, gen_kwargs: dict) -> dict:
    calls = spy_on(monkeypatch, model.model, "generate")
    model.generate_until([task_request(task, 0, gen_kwargs)])
    (_, kwargs), = calls
    return kwargs


def test_a_request_without_settings_is_decoded_greedily(lmm, monkeypatch):
    model, task = lmm
    kwargs = spied_generate_kwargs(model, task, monkeypatch, {})  # no until, temperature or length
    assert not kwargs["do_sample"] and kwargs["num_beams"] == 1 and kwargs["max_new_tokens"] > 0


@pytest.mark.parametrize("settings", [
    {"temperature": 0.5, "top_p": 0.9, "max_new_tokens": 2},
    {"temperature": 0, "num_beams": 2, "max_new_tokens": 3, "until": "\n\n"},
    {"temperature": 0.2, "top_p": 0.9, "do_sample": False, "max_new_tokens": 2},  # do_sample says greedy
    {"do_sample": True, "max_new_tokens": 2},  # sampling at the model's own temperature
])
def test_sampling_beams_and_length_follow_the_request(lmm, monkeypatch, settings):
    model, task = lmm
    kwargs = spied_generate_kwargs(model, task, monkeypatch, dict(settings))
    temperature = settings.get("temperature", 0)
    sampling = settings.get("do_sample", temperature > 0)
    assert kwargs["do_sample"] == sampling
    assert kwargs["temperature"] == (temperature if sampling and temperature > 0 else None)
    assert kwargs["top_p"] == (settings.get("top_p") if sampling else None)
    assert kwargs["num_beams"] == settings.get("num_beams", 1)
    assert kwargs["max_new_tokens"] == settings["max_new_tokens"]


def test_the_prompt_is_llavas_chat_prompt_with_one_image_first(lmm):
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    model, task = lmm
    question, visuals = docs()[2]["question"], task.doc_to_visual(docs()[2])
    conv = conv_templates[model.conv_template].copy()  # as LLaVA's own run_llava.py prompts
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
    conv.append_message(conv.roles[1], None)
    expected = tokenizer_image_token(conv.get_prompt(), model.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    assert model._prompt_ids(question, visuals)[0].tolist() == expected.tolist()
    # a context that places the image itself keeps its one placeholder; a text-only one gets none
    placed = model._prompt_ids(f"Look: {DEFAULT_IMAGE_TOKEN}\n{question}", visuals)
    assert int((placed == IMAGE_TOKEN_INDEX).sum()) == 1
    assert int((model._prompt_ids(question, []) == IMAGE_TOKEN_INDEX).sum()) == 0


def test_a_request_without_a_visual_hook_is_text_only(lmm, monkeypatch):
    from llava.constants import IMAGE_TOKEN_INDEX

    model, _ = lmm
    calls = spy_on(monkeypatch, model.model, "forward")
    model.loglikelihood([request("loglikelihood", ("Is it red?", " yes", None, 0, TASK, "test"), 0)])
    (_, kwargs), = calls
    assert int((kwargs["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 0 and "images" not in kwargs


def test_a_non_square_image_is_preprocessed_with_the_checkpoints_aspect_ratio_setting(lmm):
    from llava.mm_utils import process_images
    from PIL import Image

    model, _ = lmm
    assert model.model.config.image_aspect_ratio == "pad"
    wide = Image.fromarray((torch.arange(40 * 96 * 3) % 251).reshape(40, 96, 3).to(torch.uint8).numpy())
    inputs = model._image_inputs([wide])
    torch.testing.assert_close(inputs["images"], process_images([wide], model.image_processor, model.model.config))
    # padding to a square first differs from CLIP's resize-and-centre-crop
    assert not torch.allclose(inputs["images"], model.image_processor.preprocess(wide, return_tensors="pt")["pixel_values"])


def test_an_until_given_as_one_string_is_one_stop_sequence(lmm):
    model, task = lmm
    doc = docs()[1]
    visuals = task.doc_to_visual(doc)
    cont = model.tokenizer.encode(" It shows a red square", add_special_tokens=False)
    head, _ = steering_head(model, model._prompt_ids(task.doc_to_text(doc), visuals), model._image_inputs(visuals), cont)
    with lm_head_weight(model, head):
        full, = generate(model, task, 1, until=[], max_new_tokens=len(cont))
        cut, = generate(model, task, 1, until="sq", max_new_tokens=len(cont))  # lmms-eval may pass a bare string
    assert full == "It shows a red square"
    assert cut == "It shows a red"  # cut at "sq", not at the first "s"


# the chat interface (lmms-eval's recommended one) and the legacy one ---------------------------------
def test_a_task_without_doc_to_messages_is_prompted_as_llava_prompts_with_the_image_first(lmm):
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    from toklip_plugin.integrations.lmms_eval.model import llava_turns

    model, task = lmm
    doc = docs()[2]
    # lmms-eval's messages for a task with doc_to_visual + doc_to_text: the images, then the text
    system, turns, images = llava_turns(task.doc_to_messages(doc))
    conv = conv_templates[model.conv_template].copy()  # as LLaVA's own run_llava.py prompts
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + task.doc_to_text(doc))
    conv.append_message(conv.roles[1], None)
    expected = tokenizer_image_token(conv.get_prompt(), model.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    assert model._conversation_ids(turns, system)[0].tolist() == expected.tolist()
    assert [image.tobytes() for image in images] == [image.tobytes() for image in task.doc_to_visual(doc)]


HAND_WRITTEN_PROMPTS = {  # the conversation below in each template, written out by hand
    "vicuna_v1": "Answer in one word. USER: <image>\nLeft:\n<image>\nRight: which one is red? ASSISTANT: left</s>"
                 "USER: And the blue one? ASSISTANT:",
    "qwen_2": "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n<image>\nLeft:\n<image>\n"
              "Right: which one is red?<|im_end|>\n<|im_start|>assistant\nleft<|im_end|>\n"
              "<|im_start|>user\nAnd the blue one?<|im_end|>\n<|im_start|>assistant\n",
}


def test_chat_messages_become_the_llava_conversation_with_one_placeholder_per_image(lmm, monkeypatch):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images, tokenizer_image_token
    from PIL import Image

    model, _ = lmm
    left_path = TASKS / TASK / docs()[0]["image"]
    with Image.open(left_path) as left, Image.open(TASKS / TASK / docs()[1]["image"]) as right:
        left, right = left.convert("RGB"), right.convert("RGB")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
        {"role": "user", "content": [{"type": "image", "url": str(left_path)}, {"type": "text", "text": "Left:"},
                                     {"type": "image", "url": right},
                                     {"type": "text", "text": "<image>Right: which one is red?"}]},  # a stray <image>
        {"role": "assistant", "content": [{"type": "text", "text": "left"}]},
        {"role": "user", "content": [{"type": "text", "text": "And the blue one?"}]},
    ]
    calls = spy_on(monkeypatch, model.model, "generate")
    model.generate_until([request("generate_until", ("", lambda doc: messages, {"max_new_tokens": 2}, 0, TASK, "test"), 0)])
    (args, kwargs), = calls
    expected = tokenizer_image_token(HAND_WRITTEN_PROMPTS[model.conv_template], model.tokenizer, IMAGE_TOKEN_INDEX,
                                     return_tensors="pt")
    assert args[0][0].tolist() == expected.tolist()
    assert int((args[0] == IMAGE_TOKEN_INDEX).sum()) == 2
    assert kwargs["image_sizes"] == [left.size, right.size]
    torch.testing.assert_close(kwargs["images"], process_images([left, right], model.image_processor, model.model.config))


@pytest.mark.parametrize("kind", ["video", "audio"])
def test_video_or_audio_in_a_message_is_refused_with_a_reason(kind):
    from toklip_plugin.integrations.lmms_eval.model import llava_turns

    messages = [{"role": "user", "content": [{"type": kind, "url": f"clip.{kind}"}, {"type": "text", "text": "Hi"}]}]
    message = f"toklip_llava reads text and images; a user message has {kind} content (use a task without {kind} inputs)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        llava_turns(messages)


def test_the_legacy_interface_prompts_lmms_evals_legacy_requests_as_the_chat_one_does(checkpoints, lmms_tasks,
                                                                                      monkeypatch):
    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlava, TokLIPLlavaSimple

    spied = []
    for cls, kind in [(TokLIPLlavaSimple, "simple"), (TokLIPLlava, "chat")]:
        model, task = cls(pretrained=str(checkpoints("llama")), device="cpu"), lmms_tasks(kind)
        model.task_dict = {TASK: task.dataset}
        task.build_all_requests(limit=3, rank=0, world_size=1)  # lmms-eval's own requests for the interface
        calls = spy_on(monkeypatch, model.model, "generate")
        assert len(model.generate_until([r for r in task.instances])) == 3
        spied.append(calls)
    for doc, (simple_args, simple_kwargs), (chat_args, chat_kwargs) in zip(docs(), *spied):
        assert_one_image_goes_with_the_prompt(model, simple_args[0], simple_kwargs, doc)
        assert simple_args[0].tolist() == chat_args[0].tolist()
        torch.testing.assert_close(simple_kwargs["images"], chat_kwargs["images"])


def write_multiple_choice_task(root: Path) -> str:
    """``toklip_pope_mini`` as a multiple-choice task (" yes" / " no" ranked by log-likelihood), on its data and hooks."""
    folder = root / "toklip_pope_mini_mc"
    folder.mkdir()
    (folder / "utils.py").write_text((TASKS / TASK / "utils.py").read_text())
    (folder / "images").symlink_to(TASKS / TASK / "images")
    (folder / "toklip_pope_mini_mc.yaml").write_text(f"""task: toklip_pope_mini_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {TASKS / TASK / "test.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: ["yes", "no"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return "toklip_pope_mini_mc"


@pytest.fixture(scope="module")
def multiple_choice_tasks(tmp_path_factory):
    """``(manager, name)``: an lmms-eval task manager that knows the multiple-choice task only."""
    from lmms_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("lmms-mc")
    name = write_multiple_choice_task(root)
    return TaskManager(include_path=str(root), include_defaults=False), name


def test_multiple_choice_tasks_are_scored_by_the_legacy_interface_and_refused_by_chat(checkpoints, multiple_choice_tasks):
    """lmms-eval builds chat requests for generation tasks only, so the legacy class stays for ``--force_simple``."""
    from lmms_eval.tasks import get_task_dict

    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlavaSimple

    manager, name = multiple_choice_tasks
    with pytest.raises(AssertionError, match="messages is used for generation only"):
        get_task_dict([name], manager, "chat")[name].build_all_requests(limit=2, rank=0, world_size=1)
    task = get_task_dict([name], manager, "simple")[name]
    task.build_all_requests(limit=2, rank=0, world_size=1)  # lmms-eval's own loglikelihood requests, " yes" / " no"
    model = TokLIPLlavaSimple(pretrained=str(checkpoints("llama")), device="cpu")
    model.task_dict = {name: task.dataset}
    scored = model.loglikelihood(task.instances)
    expected = [stepwise_logprob(model, docs()[r.doc_id]["question"], task_hooks().doc_to_visual(docs()[r.doc_id]),
                                 r.args[1]) for r in task.instances]
    assert sorted((r.doc_id, r.args[1]) for r in task.instances) == [(0, " no"), (0, " yes"), (1, " no"), (1, " yes")]
    assert [logprob for logprob, _ in scored] == pytest.approx([logprob for logprob, _ in expected], abs=1e-4)
    assert [greedy for _, greedy in scored] == [greedy for _, greedy in expected]


@pytest.mark.xfail(strict=True, raises=Exception, reason=(
    "lmms-eval 0.7.3's evaluate() passes every model output through unwrap_generation_output, which turns a "
    "loglikelihood (float, bool) into a string, so multiple-choice scoring fails for every model"))
def test_lmms_evals_evaluator_scores_a_multiple_choice_task_with_the_legacy_interface(checkpoints, multiple_choice_tasks):
    from lmms_eval.evaluator import simple_evaluate

    from toklip_plugin.integrations.lmms_eval.model import TokLIPLlavaSimple

    manager, name = multiple_choice_tasks
    model = TokLIPLlavaSimple(pretrained=str(checkpoints("llama")), device="cpu")
    results = simple_evaluate(model=model, tasks=[name], limit=2, task_manager=manager, batch_size=1)
    assert 0 <= results["results"][name]["acc,none"] <= 1

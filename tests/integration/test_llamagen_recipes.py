"""The LlamaGen recipes in configs/llamagen/ (paper Tables 4 and 7), checked with ``DRY_RUN=1``.

Without a checkout the tests read the printed commands (rows, epochs, baselines, fusions, sample
counts, what each step reads from the step before) and run fid.sh's record on a stand-in for
LlamaGen's TensorFlow evaluator. With ``LLAMAGEN_ROOT`` set, every printed command is also parsed
by the argparse parser of the LlamaGen script it runs (in a patched copy of the checkout), and the
stand-in is checked against the metric lines the real evaluator writes.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from toklip_plugin.patching import apply_patches

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "llamagen"
ROOT = os.environ.get("LLAMAGEN_ROOT")
needs_checkout = pytest.mark.skipif(not ROOT, reason="set LLAMAGEN_ROOT to a LlamaGen checkout to run this")
IMAGENET_TRAIN_SIZE = 1_281_167  # LlamaGen's dataset/imagenet.py hard-codes this many items
METRICS = ("Inception Score", "FID", "sFID", "Precision", "Recall")  # what evaluator.py writes, in order


@dataclass
class Command:
    env: dict
    script: str
    args: list
    flags: dict = field(default_factory=dict)


def parse_command(line: str) -> Command:
    """``[env K=V ...] (torchrun OPTS | python) SCRIPT.py ARGS`` -> its parts; ``--flag value`` pairs in ``flags``."""
    tokens = shlex.split(line)
    env = {}
    if tokens[0] == "env":
        tokens.pop(0)
        while "=" in tokens[0] and not tokens[0].startswith("-"):
            key, _, value = tokens.pop(0).partition("=")
            env[key] = value
    at = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
    script, args = tokens[at], tokens[at + 1:]
    flags = {a: args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True
             for i, a in enumerate(args) if a.startswith("--")}
    return Command(env, script, args, flags)


# settings env.sh and the scripts read; the caller's values must not leak into the dry runs
SETTINGS = ("IMAGENET_TRAIN", "CKPT_EPOCHS", "VQ_CKPT", "FID_REFERENCE", "PYTHON", "TOKLIP_FUSION",
            "TOKLIP_CHECKPOINT", "TOKLIP_MODEL")


def dry_run(script: str, *args: str, work: Path, root: Path) -> list[Command]:
    """The commands ``bash configs/llamagen/SCRIPT ARGS`` prints with ``DRY_RUN=1``, parsed."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(DRY_RUN="1", LLAMAGEN_ROOT=str(root), WORK=str(work), TOKLIP_HOME="/weights", NPROC="8")
    out = subprocess.run(["bash", str(CONFIGS / script), *args], env=env, capture_output=True, text=True,
                         check=True).stdout
    return [parse_command(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def workdir(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "llamagen").mkdir()
    return tmp_path / "work", tmp_path / "llamagen"


def runs(commands: list[Command]) -> dict[str, dict[str, Command]]:
    """Commands grouped by the run folder they work in: {run: {"train"|"sample"|"fid": Command}}."""
    grouped: dict[str, dict[str, Command]] = {}
    for c in commands:
        if c.script.endswith("train_c2i.py"):
            grouped.setdefault(Path(c.flags["--results-dir"]).parent.name, {})["train"] = c
        elif c.script.endswith("sample_c2i_ddp.py"):
            grouped.setdefault(Path(c.flags["--sample-dir"]).parent.name, {})["sample"] = c
        elif c.script.endswith("evaluator.py"):
            grouped.setdefault(Path(c.args[1]).parent.parent.name, {})["fid"] = c
    return grouped


def final_step(epochs: int) -> int:
    return epochs * (IMAGENET_TRAIN_SIZE // 256)  # drop_last at the global batch of 256


def check_row(run: dict[str, Command], size: int, epochs: int, num_samples: int) -> None:
    """Train -> sample -> FID chain of one row: each step reads what the step before writes."""
    train, sample, fid = run["train"], run["sample"], run["fid"]
    gpt = train.flags["--gpt-model"]
    assert int(train.flags["--epochs"]) == epochs and int(train.flags["--image-size"]) == size
    assert final_step(epochs) % int(train.flags["--ckpt-every"]) == 0  # the last step is saved
    checkpoint = Path(sample.flags["--gpt-ckpt"])
    assert int(checkpoint.stem) == final_step(epochs)
    assert checkpoint.is_relative_to(train.flags["--results-dir"])
    assert sample.flags["--gpt-model"] == gpt and int(sample.flags["--image-size"]) == size
    assert int(sample.flags["--num-fid-samples"]) == num_samples and sample.flags["--image-size-eval"] == "256"
    assert Path(fid.args[1]).parent == Path(sample.flags["--sample-dir"])
    assert Path(fid.args[0]).name == "VIRTUAL_imagenet256_labeled.npz"
    toklip = f"/weights/TokLIP_{'S_256' if size == 256 else 'L_384'}.pt"
    if gpt.endswith("-toklip"):
        assert train.env == sample.env and train.env["TOKLIP_CHECKPOINT"] == toklip  # same TokLIP and fusion
        assert (sample.flags["--vq-model"], sample.flags["--vq-ckpt"]) == ("toklip", toklip)
    else:
        assert train.env == sample.env == {}
        assert (sample.flags["--vq-model"], sample.flags["--vq-ckpt"]) == ("VQ-16", "/weights/vq_ds16_t2i.pt")


def test_every_script_is_valid_bash():
    for script in sorted(CONFIGS.glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_table4_trains_each_row_for_the_papers_epochs_beside_its_vq16_baseline(workdir):
    work, root = workdir
    commands = dry_run("table4.sh", work=work, root=root)
    extract = commands[0]
    assert extract.script.endswith("extract_codes_c2i.py") and extract.flags["--image-size"] == "256"
    rows = runs(commands[1:])
    trained = sorted((r["train"].flags["--gpt-model"], int(r["train"].flags["--epochs"])) for r in rows.values())
    assert trained == sorted([("GPT-B", 50), ("GPT-B-toklip", 50), ("GPT-B", 300), ("GPT-B-toklip", 300),
                              ("GPT-L", 50), ("GPT-L-toklip", 50)])
    for run in rows.values():
        check_row(run, 256, int(run["train"].flags["--epochs"]), 50_000)
        assert run["train"].flags["--code-path"] == extract.flags["--code-path"]  # baseline and TokLIP: same codes
        assert run["train"].env.get("TOKLIP_FUSION", "concat") == "concat"


def test_table7_is_gpt_b_at_384_for_50_epochs_with_three_fusions_and_the_baseline(workdir):
    work, root = workdir
    commands = dry_run("table7.sh", work=work, root=root)
    assert commands[0].flags["--image-size"] == "384"
    rows = runs(commands[1:])
    fusions = sorted(r["train"].env.get("TOKLIP_FUSION", "baseline") for r in rows.values())
    assert fusions == ["baseline", "concat", "sum", "weighted_sum"]
    assert {r["train"].flags["--gpt-model"] for r in rows.values()} == {"GPT-B", "GPT-B-toklip"}
    for run in rows.values():
        check_row(run, 384, 50, 10_000)


def test_codes_are_not_extracted_again_and_a_row_resumes_from_its_latest_checkpoint(workdir):
    work, root = workdir
    (work / "imagenet_code_c2i_flip_ten_crop_384").mkdir(parents=True)
    partial = work / "runs" / "GPT-B_384px_50ep" / "results" / "000-GPT-B" / "checkpoints"
    partial.mkdir(parents=True)
    for step in (50_040, 100_080):
        (partial / f"{step:07d}.pt").touch()
    done = work / "runs" / "GPT-B-toklip_384px_50ep_sum" / "results" / "001-GPT-B-toklip" / "checkpoints"
    done.mkdir(parents=True)
    (done / f"{final_step(50):07d}.pt").touch()
    commands = dry_run("table7.sh", work=work, root=root)
    assert not any(c.script.endswith("extract_codes_c2i.py") for c in commands)
    rows = runs(commands)
    assert rows["GPT-B_384px_50ep"]["train"].flags["--gpt-ckpt"] == str(partial / "0100080.pt")
    assert "--gpt-ckpt" not in rows["GPT-B-toklip_384px_50ep_concat"]["train"].flags
    assert "train" not in rows["GPT-B-toklip_384px_50ep_sum"]  # trained: sample from its final checkpoint
    assert rows["GPT-B-toklip_384px_50ep_sum"]["sample"].flags["--gpt-ckpt"] == str(done / f"{final_step(50):07d}.pt")


STAND_IN_EVALUATOR = '''"""Stand-in for LlamaGen's evaluations/c2i/evaluator.py (which needs TensorFlow and a download):
same arguments, and the report file the real one writes beside the samples."""
import sys
import numpy as np

ref_batch, sample_batch = sys.argv[1:]
n = len(np.load(sample_batch)["arr_0"])
with open(sample_batch.replace(".npz", ".txt"), "w") as f:
    for i, name in enumerate({metrics!r}):
        print(f"{{name}}:", 1.5 + i + n / 1000, file=f)
'''


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fid_record_names_the_evaluator_commit_reference_batch_and_samples(tmp_path):
    root = tmp_path / "LlamaGen"
    evaluator = root / "evaluations" / "c2i" / "evaluator.py"
    evaluator.parent.mkdir(parents=True)
    evaluator.write_text(STAND_IN_EVALUATOR.format(metrics=METRICS))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "stand-in"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    rng = np.random.default_rng(0)
    samples, reference = tmp_path / "run" / "samples" / "GPT-B-0250200.npz", tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    samples.parent.mkdir(parents=True)
    np.savez(samples, arr_0=rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8))
    np.savez(reference, arr_0=rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    env = {**os.environ, "LLAMAGEN_ROOT": str(root), "WORK": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(CONFIGS / "fid.sh"), str(samples), str(reference)], env=env,
                         capture_output=True, text=True, check=True).stdout

    record = json.loads(samples.with_suffix(".fid.json").read_text())
    assert record["metrics"] == {name: 1.5 + i + 7 / 1000 for i, name in enumerate(METRICS)}
    assert "LlamaGen evaluations/c2i/evaluator.py" in record["fid_implementation"]
    assert record["evaluator"] == {"path": str(evaluator), "sha256": sha256(evaluator), "llamagen_commit": commit}
    assert record["reference_batch"] == {"path": str(reference), "sha256": sha256(reference)}
    assert record["samples"] == {"path": str(samples), "sha256": sha256(samples), "shape": [7, 16, 16, 3]}
    assert record["evaluator_output"] == str(samples.with_suffix(".txt"))
    assert f"FID {record['metrics']['FID']} over 7 samples" in out


# with a LlamaGen checkout ------------------------------------------------------------------
PARSE_DRIVER = r'''
import argparse, ast, contextlib, io, json, sys


def parser_of(script):
    """Run the script's own parser-building statements (from ArgumentParser() up to parse_args())."""
    source = open(script).read()
    names = {"argparse": argparse}
    if "GPT_models" in source:
        from autoregressive.models.gpt import GPT_models
        names["GPT_models"] = GPT_models
    if "VQ_models" in source:
        from tokenizer.tokenizer_image.vq_model import VQ_models
        names["VQ_models"] = VQ_models
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        for i, stmt in enumerate(body if isinstance(body, list) else []):
            if isinstance(stmt, ast.Assign) and ast.unparse(stmt.value).startswith("argparse.ArgumentParser("):
                block = []
                for s in body[i:]:
                    if "parse_args" in ast.unparse(s):
                        break
                    block.append(s)
                exec(compile(ast.Module(block, []), script, "exec"), names)
                return names[stmt.targets[0].id]
    raise SystemExit(f"no ArgumentParser in {script}")


results = []
for script, argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = vars(parser_of(script).parse_args(argv))
        results.append({"script": script, "parsed": parsed})
    except SystemExit:
        results.append({"script": script, "error": err.getvalue()})
print("RESULT" + json.dumps(results, default=str))
'''


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the checkout's sources with our patches applied (so its dicts know the -toklip names)."""
    copy = tmp_path_factory.mktemp("llamagen") / "LlamaGen"
    sources = re.compile(r".*\.(py|md|txt|sh)$")
    shutil.copytree(ROOT, copy, ignore=lambda d, names: [
        n for n in names if n == ".git" or ((Path(d) / n).is_file() and not sources.match(n))])
    apply_patches("llamagen", copy)
    return copy


@needs_checkout
@pytest.mark.llamagen
def test_every_command_is_accepted_by_the_argparse_of_the_script_it_runs(checkout, workdir):
    work, _ = workdir
    commands = [*dry_run("table4.sh", work=work, root=checkout), *dry_run("table4.sh", "384", work=work, root=checkout),
                *dry_run("table7.sh", work=work, root=checkout)]
    payload = json.dumps([[c.script, c.args] for c in commands])
    result = subprocess.run([sys.executable, "-c", PARSE_DRIVER], input=payload, cwd=checkout, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(checkout)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.split("RESULT", 1)[1])
    assert len(parsed) == len(commands)
    for command, outcome in zip(commands, parsed):
        assert "error" not in outcome, f"{command.script} {shlex.join(command.args)}: {outcome.get('error')}"
        args = outcome["parsed"]
        if command.script.endswith("train_c2i.py"):
            assert args["epochs"] == int(command.flags["--epochs"]) and args["global_batch_size"] == 256
        if command.script.endswith("sample_c2i_ddp.py"):
            assert args["num_fid_samples"] in (10_000, 50_000) and args["image_size_eval"] == 256
        if command.script.endswith("evaluator.py"):
            assert args["ref_batch"].endswith("VIRTUAL_imagenet256_labeled.npz")


@needs_checkout
@pytest.mark.llamagen
def test_the_real_evaluator_writes_the_metric_lines_fid_sh_records():
    source = (Path(ROOT) / "evaluations" / "c2i" / "evaluator.py").read_text()
    written = [ast.literal_eval(call.args[0]) for call in ast.walk(ast.parse(source))
               if isinstance(call, ast.Call) and ast.unparse(call.func) == "print"
               and any(k.arg == "file" for k in call.keywords)]
    assert tuple(name.rstrip(":") for name in written) == METRICS
    assert "args.sample_batch.replace('.npz', '.txt')" in source  # where fid.sh reads them

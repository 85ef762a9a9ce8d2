"""``make mutation``: mutmut over the modules issue 15 names, each group against its own fast tests.

mutmut 3 keeps its state in ``./mutants`` and reads ``[tool.mutmut]`` from ``./pyproject.toml``, so
each group runs in its own copy of the working tree under ``build/mutation/GROUP`` (gitignored): the
repository's ``[tool.mutmut]`` settings plus the group's files (``only_mutate``) and tests
(``pytest_add_cli_args_test_selection``). A rerun keeps the group's ``mutants/`` folder, and mutmut
retests only the functions that changed. Survivors and why they are left: tests/MUTATION.md.

    python tests/run_mutation.py [GROUP ...]      # default: every group, in the order below
    python tests/run_mutation.py --by-hand GROUP [PATTERN ...]   # recheck mutants one fresh process each

``--by-hand`` reruns the named mutants of a group's last run (``fnmatch`` patterns over mutmut's names, default:
its survivors) against the group's current tests (the mutated code is the last run's: rerun the group after
changing the package), each in a fresh ``python -m pytest`` with mutmut's switch
(``MUTANT_UNDER_TEST``) set, and prints killed / survived / timeout per mutant. Use it after adding tests, for
tests that run the package in a subprocess (mutmut's coverage never maps those), and for ``lmms_eval``, whose
tests fail in mutmut's forked children (tests/MUTATION.md, fourth round).
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "mutation"
COPIED = ("toklip_plugin", "tests", "eval", "configs", "patches")  # configs/ and patches/: data the package reads

# group -> (files to mutate, test selection); the slow distributed / CLI tests are left to `make test`
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "metrics": (["toklip_plugin/evaluation/metrics.py"],
                ["tests/unit/test_eval_metrics.py", "tests/unit/test_eval_metrics_mutants.py"]),
    "losses": (["toklip_plugin/train/losses.py"],
               ["tests/unit/test_train_losses.py", "tests/unit/test_train_losses_mutants.py", "-k", "not two_rank"]),
    # the rank / world-size / gather options only matter across ranks: TokLIPLoss.__init__'s mutants (ONLY)
    # against the two-rank tests, one sigmoid and the InfoNCE case (~45 s a mutant)
    "losses_ranks": (["toklip_plugin/train/losses.py"],
                     ["tests/unit/test_train_losses.py", "-k", "two_rank and (infonce or sigmoid-gather)"]),
    "checkpoints": (["toklip_plugin/checkpoints.py"],
                    ["tests/unit/test_checkpoints.py", "tests/unit/test_vq.py", "tests/unit/test_hub.py",
                     "tests/unit/test_save_pretrained_crash.py", "tests/unit/test_random_weights_warning.py",
                     "tests/unit/test_official_checkpoints.py", "tests/unit/test_openclip_encoder.py",
                     "tests/unit/test_issue12_mutants.py", "tests/unit/test_checkpoints_mutants.py"]),
    "models": (["toklip_plugin/models/token_encoder.py", "toklip_plugin/models/toklip.py",
                "toklip_plugin/models/vq.py", "toklip_plugin/models/text.py"],
               ["tests/unit/test_token_encoder.py", "tests/unit/test_vq.py", "tests/unit/test_api.py",
                "tests/unit/test_openclip_encoder.py", "tests/unit/test_models_mutants.py"]),
    "llava_tower": (["toklip_plugin/integrations/llava/tower.py"],
                    ["tests/integration/test_llava_tower.py", "tests/integration/test_llava_vq16_tower.py",
                     "tests/integration/test_llava_tower_mutants.py"]),
    "lmms_eval": (["toklip_plugin/integrations/lmms_eval/model.py"],
                  ["tests/integration/test_lmms_eval.py", "tests/integration/test_lmms_eval_mutants.py",
                   "-k", "not command_runs"]),
    # issue 12's modules (issue 15, item 3); the 35 s toklip-l CLI test and the slow W&B / import tests are left out
    "hub": (["toklip_plugin/hub.py", "toklip_plugin/model_card.py"],
            ["tests/unit/test_hub.py", "tests/unit/test_checkpoints.py", "tests/unit/test_random_weights_warning.py",
             "tests/integration/test_train_push_to_hub.py", "tests/unit/test_issue12_mutants.py"]),
    "cli_options": (["toklip_plugin/weight_options.py", "toklip_plugin/progress.py", "toklip_plugin/eval_command.py"],
                    ["tests/unit/test_progress.py", "tests/e2e/test_cli.py", "tests/e2e/test_eval_cli.py",
                     "tests/unit/test_issue12_mutants.py", "-k", "not defaults_to_released_toklip_l"]),
    "experiment_logs": (["toklip_plugin/train/metric_log.py"],
                        ["tests/unit/test_metric_log.py", "tests/unit/test_experiment_logs.py",
                         "tests/unit/test_issue12_mutants.py", "tests/unit/test_experiment_logs_mutants.py"]),
    "open_clip": (["toklip_plugin/open_clip_api.py", "toklip_plugin/integrations/open_clip/registry.py",
                   "toklip_plugin/integrations/open_clip/trunk.py"],
                  ["tests/unit/test_open_clip_api.py", "tests/integration/test_open_clip_registration.py",
                   "tests/unit/test_issue12_mutants.py", "tests/unit/test_open_clip_mutants.py", "-m", "not slow"]),
    # the multi-process cache builds (slow) are left out
    "train_data": (["toklip_plugin/train/data.py", "toklip_plugin/train/cache_file.py"],
                   ["tests/unit/test_train_data.py", "tests/unit/test_train_cache_file.py",
                    "tests/integration/test_train_code_cache.py", "tests/unit/test_train_data_mutants.py",
                    "-m", "not slow"]),
    # issue 14's modules (issue 15, item 3): the core generation pieces against the fused GPT's tests, and the
    # unified LLaVA without its slow sampling / training tests (the subprocess training run is left out)
    "fusion": (["toklip_plugin/models/fusion.py", "toklip_plugin/models/cached_encoder.py",
                "toklip_plugin/models/sampling.py"],
               ["tests/integration/test_llamagen_contract.py",
                ("tests/integration/test_openclip_teacher.py::test_incremental_steps_of_a_class_token_encoder_with_"
                 "norm_pre_equal_its_full_forward"), "tests/unit/test_fusion_mutants.py", "-k",
                "not toklip_vq and not fullgraph"]),
    "unified": (["toklip_plugin/integrations/llava/unified.py", "toklip_plugin/integrations/llava/image_generation.py",
                 "toklip_plugin/integrations/llava/unified_template.py",
                 "toklip_plugin/integrations/llava/unified_base.py"],
                ["tests/integration/test_llava_unified.py", "tests/integration/test_llava_unified_data.py",
                 "tests/integration/test_llava_unified_mutants.py", "-m", "not slow"]),
    # toklip-generate in-process (its subprocess and checkpoint-building tests are slow and left out)
    "generate_cli": (["toklip_plugin/integrations/llava/generate_cli.py"],
                     ["tests/e2e/test_generate_cli.py", "tests/e2e/test_generate_cli_mutants.py", "-m", "not slow"]),
}
# groups that test only some of their files' mutants (mutmut's name patterns); the others stay "not checked"
ONLY: dict[str, list[str]] = {"losses_ranks": ["toklip_plugin.train.losses.x\u01c1TokLIPLoss\u01c1__init____mutmut_*"]}


def prepare(group: str) -> Path:
    """A fresh copy of the sources, tests and config for ``group``; its ``mutants/`` state is kept."""
    files, tests = GROUPS[group]
    root = WORK / group
    root.mkdir(parents=True, exist_ok=True)
    for name in COPIED:  # copy2 keeps mtimes, which is how mutmut tells a changed file from an unchanged one
        shutil.rmtree(root / name, ignore_errors=True)
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    text = (REPO / "pyproject.toml").read_text()
    header = "[tool.mutmut]\n"
    if header not in text:
        raise SystemExit("pyproject.toml has no [tool.mutmut] section")
    group_settings = f"only_mutate = {json.dumps(files)}\npytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
    (root / "pyproject.toml").write_text(text.replace(header, header + group_settings, 1))
    return root


def run(group: str) -> int:
    root = prepare(group)
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    code = subprocess.call([str(mutmut), "run", "--max-children", "1", *ONLY.get(group, [])], cwd=root, env=env)
    subprocess.call([str(mutmut), "export-cicd-stats"], cwd=root, env=env)
    stats = root / "mutants" / "mutmut-cicd-stats.json"
    if stats.exists():
        print(f"{group}: {json.loads(stats.read_text())}")
    subprocess.call([str(mutmut), "results"], cwd=root, env=env)
    return code


def recorded_mutants(root: Path) -> dict[str, int]:
    """Mutant name -> exit code of its test run in the group's last mutmut run (0: survived)."""
    codes: dict[str, int] = {}
    for meta in (root / "mutants").rglob("*.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def by_hand(group: str, patterns: list[str], timeout: float = 600) -> int:
    """Each selected mutant against the group's tests in a fresh process; returns the number that survived."""
    root = prepare(group)
    shutil.rmtree(root / "mutants" / "tests", ignore_errors=True)  # the mutated package stays as the last run left it
    shutil.copytree(REPO / "tests", root / "mutants" / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    recorded = recorded_mutants(root)
    names = sorted(n for n, code in recorded.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)
                   or (not patterns and code == 0))
    if not names:
        raise SystemExit(f"{group}: no recorded mutant matches {patterns or 'survived'}; run the group first")
    survived = 0
    for name in names:
        env = {**os.environ, "MUTANT_UNDER_TEST": name, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *GROUPS[group][1]]
        try:
            code = subprocess.call(command, cwd=root / "mutants", env=env, timeout=timeout,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            verdict = "survived" if code == 0 else "killed" if code == 1 else f"error (pytest exit {code})"
        except subprocess.TimeoutExpired:
            verdict = "timeout (killed)"
        survived += verdict == "survived"
        print(f"{name}: {verdict}", flush=True)
    print(f"{group}: {survived} of {len(names)} survived")
    return survived


def main(argv: list[str]) -> int:
    if argv[:1] == ["--by-hand"]:
        if len(argv) < 2 or argv[1] not in GROUPS:
            raise SystemExit(f"usage: run_mutation.py --by-hand GROUP [PATTERN ...]; groups: {', '.join(GROUPS)}")
        return min(by_hand(argv[1], argv[2:]), 1)
    unknown = [g for g in argv if g not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    return max((run(group) for group in argv or list(GROUPS)), default=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

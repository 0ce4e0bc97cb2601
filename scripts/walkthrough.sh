#!/usr/bin/env bash
# The quick start as a terminal walkthrough, recorded by scripts/record_walkthrough.py
# (docs/training/walkthrough.cast). It runs against a suite that is already up on
# $EDGE (the recorder starts one); every command is shown before it runs.
set -euo pipefail
EDGE=${EDGE:-http://localhost:8080}
KEY=${KEY:-sk-sluice-dev}

show() {  # print a command as if typed at a prompt, then run it
  printf '\n$ %s\n' "$*"
  sleep 0.4
  eval "$@"
}

printf '# Sluice quick start: the suite is up (make up); talk to it through Envoy.\n'
show "curl -s $EDGE/v1/models -H 'authorization: Bearer $KEY' | python3 -m json.tool"
show "curl -s $EDGE/v1/chat/completions -H 'authorization: Bearer $KEY' -H 'content-type: application/json' -d '{\"model\":\"default\",\"messages\":[{\"role\":\"user\",\"content\":\"What is a sluice?\"}],\"max_tokens\":12}' | python3 -m json.tool"
printf '\n# Streaming: the same call with "stream": true answers as server-sent events.\n'
show "curl -sN $EDGE/v1/chat/completions -H 'authorization: Bearer $KEY' -H 'content-type: application/json' -d '{\"model\":\"default\",\"messages\":[{\"role\":\"user\",\"content\":\"Stream it\"}],\"max_tokens\":6,\"stream\":true}'"
printf '\n# A wrong key is a typed JSON error with a 401, never a 5xx.\n'
show "curl -s -w '\\nHTTP %{http_code}\\n' $EDGE/v1/models -H 'authorization: Bearer sk-wrong'"
printf '\n# Interactive API docs: open %s/docs in a browser.\n' "$EDGE"
show "curl -s -o /dev/null -w 'GET /docs -> %{http_code} %{redirect_url}\\n' $EDGE/docs"
printf '\n# Done. Ctrl-C in the make up terminal stops every part.\n'

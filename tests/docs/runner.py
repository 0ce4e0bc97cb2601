"""Runs the docs' Python blocks one after another in one interpreter (started by
tests/docs/test_examples.py), so the heavy imports (grpc, openai) are paid once.

Protocol: one JSON object per line on stdin, {"name", "code"}; one per line on stdout,
{"ok", "output"}. Each block runs as `__main__` in fresh globals, its output captured;
any exception (SystemExit included) is a failure with its traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def run(name: str, code: str) -> tuple[bool, str]:
    output = io.StringIO()
    ok = True
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        except BaseException:  # every failure of a block, SystemExit too, is reported
            ok = False
            traceback.print_exc()
    return ok, output.getvalue()


def main() -> None:
    reply = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        ok, output = run(request["name"], request["code"])
        reply.write(json.dumps({"ok": ok, "output": output}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()

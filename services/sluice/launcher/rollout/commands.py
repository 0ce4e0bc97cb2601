"""`sluice rollout rolling|blue-green|canary|status|promote|abort`: talk to the running
suite's control endpoint (control.py, through client.py) found through `--run-dir`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

_FINAL = {"completed": 0, "promoted": 0, "rolled_back": 1, "aborted": 1, "failed": 1}


def _print(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    print(f"state      {status['state']}")
    if status.get("strategy"):
        print(f"strategy   {status['strategy']}  version {status['version']}")
        print(f"phase      {status['phase']}")
        if status.get("steps"):
            print(f"step       {status['step']}/{status['steps']}")
        if status.get("reason"):
            print(f"reason     {status['reason']}")
        if status.get("seconds") is not None:
            print(f"took       {status['seconds']} s")
    print(f"stable     {status['stable_pool']}   candidate {status['candidate_pool'] or '-'}")
    for pool in status["pools"]:
        names = ", ".join(
            r["name"] + (" (draining)" if r["draining"] else "") for r in pool["replicas"]
        )
        print(f"pool {pool['name']:<6} {pool['share_percent']:>6} %  {pool['version']}: {names}")
    for gate in status["gates"]:
        mark = "ok  " if gate["passed"] else "FAIL"
        print(
            f"gate {mark} {gate['gate']:<20} candidate {gate['candidate']}  "
            f"baseline {gate['baseline']}  limit {gate['limit']}"
        )
    for decision in status["decisions"][-10:]:
        print(f"  {decision['at']}  {decision['decision']:<12} {decision['message']}")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if args.steps:
        try:
            found["steps"] = [int(step) for step in args.steps.split(",")]
        except ValueError:
            found["steps"] = args.steps  # refused by the suite, naming the field
    for name in ("analysis_window_s", "rollback_window_s", "drain_timeout_s"):
        value = getattr(args, name)
        if value is not None:
            found[name] = value
    return found


def _run(args: argparse.Namespace) -> int:
    # Imported here: urllib.request costs tens of milliseconds, and the parser is built by
    # every `sluice` command (launcher/cli.py).
    from sluice.launcher.rollout.client import ControlError, call  # noqa: PLC0415

    run_dir = Path(args.run_dir)
    try:
        if args.rollout_command in ("rolling", "blue-green", "canary"):
            body = {
                "strategy": args.rollout_command,
                "candidate": str(Path(args.candidate).resolve()),
                "candidate_bin": str(Path(args.candidate_bin).resolve())
                if args.candidate_bin
                else None,
                "version": args.label,
                "settings": _overrides(args),
            }
            status = call(run_dir, "POST", "/v1/rollout", body)
        elif args.rollout_command == "status":
            status = call(run_dir, "GET", "/v1/rollout")
        else:
            status = call(run_dir, "POST", f"/v1/rollout/{args.rollout_command}")
        if getattr(args, "wait", False):
            while status["state"] == "running":
                time.sleep(1.0)
                status = call(run_dir, "GET", "/v1/rollout")
            _print(status, args.json)
            return _FINAL.get(status["state"], 1)
    except ControlError as err:
        print(f"sluice rollout: {err}", file=sys.stderr)
        return 1
    _print(status, args.json)
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `sluice rollout …`."""
    rollout = commands.add_parser(
        "rollout",
        help="roll a new router version or configuration out on a running suite",
        description="Rolling, blue-green and canary rollouts of the router pool of a suite "
        "started by `sluice up` (docs/deployment.md).",
    )
    sub = rollout.add_subparsers(dest="rollout_command", required=True)
    for name, text in (
        ("rolling", "replace the routers one at a time"),
        ("blue-green", "start a green pool, switch all traffic, keep blue warm"),
        ("canary", "shift traffic step by step, analysed, with automatic rollback"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--candidate", required=True, help="the candidate's suite YAML")
        command.add_argument(
            "--candidate-bin", help="another installation's `sluice` executable to run"
        )
        command.add_argument("--label", help="version label (default: the file's name)")
        command.add_argument(
            "--wait", action="store_true", help="follow it to the end; exit 1 unless it succeeded"
        )
        command.add_argument("--steps", help="canary steps in percent, e.g. 5,25,50,100")
        command.add_argument(
            "--analysis-window", dest="analysis_window_s", type=float, help="seconds per step"
        )
        command.add_argument(
            "--rollback-window", dest="rollback_window_s", type=float, help="blue-green: seconds"
        )
        command.add_argument(
            "--drain-timeout", dest="drain_timeout_s", type=float, help="seconds per replica"
        )
    sub.add_parser("status", help="the rollout's state, pools, gates and decisions")
    sub.add_parser("promote", help="skip to the end: all traffic to the candidate")
    sub.add_parser("abort", help="roll back now")
    for command in sub.choices.values():
        command.add_argument("--run-dir", default=".run", help="the suite's run dir (.run)")
        command.add_argument("--json", action="store_true", help="print the status as JSON")
    rollout.set_defaults(run=_run)

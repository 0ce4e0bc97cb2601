"""Envoy's retry of a request no router answered, when there are several routers.

A router that dies (kill -9, OOM) resets the streams it held. Those it had not answered
yet — no response headers, so nothing reached the client — Envoy sends again, to another
router (`previous_hosts`); a stream already answered cannot be retried and ends with an
error the client sees. The triggers: `connect-failure` (a dead router's port refuses),
`refused-stream` (HTTP/2 REFUSED_STREAM: the router did not take the stream) and `reset`
(the connection or stream reset before any response header). `reset` rather than
`reset-before-request`, which covers only requests not yet sent upstream: a router killed
after reading a request but before answering would otherwise fail it. Repeating such a
request is safe here: nothing of it reached the client, and a generation that is
repeated costs only upstream tokens. docs/runtime.md, "Replicas", lists what fails when.
"""

from __future__ import annotations

from typing import Any

from sluice.launcher.replicas import count
from sluice.launcher.settings import SuiteSettings

RETRY_ON = "connect-failure,refused-stream,reset"
_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)


def retry_policy(settings: SuiteSettings) -> dict[str, Any]:
    """The routes' retry_policy (as route fields), empty with one router: a retry would
    meet the same dead router."""
    routers = count(settings, "router")
    if routers < 2:
        return {}
    return {
        "retry_policy": {
            "retry_on": RETRY_ON,
            # Each other router once; Envoy never retries once the response has started.
            "num_retries": routers - 1,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": _PREVIOUS_HOSTS},
                }
            ],
            "host_selection_retry_max_attempts": 5,
            "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
        }
    }

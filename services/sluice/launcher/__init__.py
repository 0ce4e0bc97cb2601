"""The launcher: `sluice up`, `sluice envoy-config`, `sluice top`."""

import os

# The supervisor checks health over gRPC, then forks the next part (subprocess with
# preexec_fn forks). gRPC's fork handlers can deadlock that fork while its own threads
# are busy (seen: `sluice up` hung after starting the limiter, the prefork handler
# waiting forever). The launcher never uses gRPC in a forked child, so turn them off
# before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

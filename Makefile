# Sluice developer commands. `make up` and `make test` create the environment first,
# installing only what uv.lock names, with its hashes (docs/dependencies.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?=
# uv itself, pinned with its hashes in requirements/uv.txt, in a venv of its own so that
# `uv sync` (which removes whatever the lock does not name) never touches it.
UV_HOME := .uv
UV      := $(UV_HOME)/bin/uv
# Never download a Python: use the one that runs make.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
# The full environment (runtime + the dev group), exactly the lock: nothing else.
STAMP         := $(VENV)/.synced-dev
# The runtime set only, for `make up`; leaves dev tools in place when already there.
RUNTIME_STAMP := $(VENV)/.synced-runtime

.PHONY: venv tools js-deps up test test-fast gen docs docs-gen lint lock lock-check sbom security \
	bench bench-limiter bench-overload envoy-config clean \
	podman-deps containers-conf base-image image image-check podman-smoke podman-e2e k8s checkov \
	semgrep hadolint scan build test-unit test-integration deploy-staging smoke \
	deploy-production health-check production-down pipeline publish-image deploy-cluster

$(UV): requirements/uv.txt
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements/uv.txt
	touch $@

$(STAMP): uv.lock $(UV)
	$(UV) sync --frozen --quiet
	touch $@ $(RUNTIME_STAMP)

$(RUNTIME_STAMP): uv.lock $(UV)
	$(UV) sync --frozen --quiet --no-dev --inexact
	touch $@

venv: $(STAMP)

## lock: re-resolve pyproject.toml's ranges into uv.lock (every package, with hashes).
## The only command that changes what gets installed; commit uv.lock with it.
lock: $(UV)
	$(UV) lock

## lock-check: fails when pyproject.toml and uv.lock disagree (part of `make lint`).
lock-check: $(UV)
	@$(UV) lock --check --quiet || { \
	  echo "uv.lock does not match pyproject.toml: run 'make lock' and commit uv.lock" >&2; \
	  exit 1; }

## tools: system tools with no PyPI package, from Debian: prometheus, promtool, amtool
## (alert-rule tests, the real-Prometheus e2e test), chromium (the web page's browser
## test; Playwright drives it, no browser download), and Go with protoc-gen-go,
## protoc-gen-go-grpc and the grpc-go sources (the Go client, clients/go; protobuf 1.5's
## APIv2-backed golang/protobuf, which grpc-go's codec needs for protoc-gen-go's output).
## Installs only what is missing (root).
tools:
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null \
	    || ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    prometheus prometheus-alertmanager chromium fonts-dejavu-core; \
	fi
	@if ! command -v go >/dev/null || ! command -v protoc-gen-go-grpc >/dev/null \
	    || ! test -f /usr/share/gocode/src/github.com/golang/protobuf/proto/wrappers.go; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
	    golang-github-golang-protobuf-1-5-dev; \
	fi

## js-deps: Node.js, the pinned `openai` JavaScript SDK for tests/e2e/test_openai_js_sdk.py and
## newman for tests/docs/test_postman.py (tests/js; `npm ci` from its committed lock, again only when the lock changes). Installs
## Debian's nodejs and npm when node or npm is missing (root).
JS_DEPS := tests/js/node_modules/.package-lock.json

$(JS_DEPS): tests/js/package.json tests/js/package-lock.json
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm; \
	fi
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

# The TypeScript client (clients/typescript): protoc-gen-es for `make gen`, tsc and Connect
# for its example client (tests/docs/test_typescript_client.py).
TS_DEPS := clients/typescript/node_modules/.package-lock.json

$(TS_DEPS): clients/typescript/package.json clients/typescript/package-lock.json $(JS_DEPS)
	npm ci --prefix clients/typescript --no-audit --no-fund --loglevel=error
	touch $@

js-deps: $(JS_DEPS) $(TS_DEPS)

## up: start the whole suite in the foreground (Ctrl-C stops it). CONFIG=file.yaml to override.
up: $(RUNTIME_STAMP)
	$(BIN)/sluice up --dev $(if $(CONFIG),--config $(CONFIG))

## test: lint, then every test (unit, integration, end-to-end with real Envoy).
test: $(STAMP) tools js-deps lint
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit tests/integration

## gen: regenerate gen/ (stubs + descriptor image) from protos/, and what reads them:
## docs/errors.md from the error table in services/sluice/core/errors.py, the reference
## pages (docs/reference/), the TypeScript stubs (clients/typescript/src/gen/) and the Go
## stubs (clients/go/src/sluice.dev/sluice/gen/).
gen: $(STAMP) js-deps
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/python scripts/gen_error_docs.py
	$(BIN)/python scripts/gen_docs.py
	$(BIN)/python scripts/gen_postman.py
	$(BIN)/python scripts/gen_apib.py
	$(BIN)/python scripts/gen_ts_client.py
	$(BIN)/python scripts/gen_go_client.py

## docs-gen: regenerate docs/reference/ (gRPC, HTTP, configuration, the Postman
## collection, the API Blueprint export) from the descriptor image, the OpenAPI document
## and the settings models.
docs-gen: $(STAMP)
	$(BIN)/python scripts/gen_docs.py
	$(BIN)/python scripts/gen_postman.py
	$(BIN)/python scripts/gen_apib.py

## docs: build the documentation site (mkdocs.yml) into build/site. --strict: a broken
## link or anchor, or a page missing from the navigation, fails. Works offline.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## lint: the lock, semgrep (our rules, deploy/semgrep), checkov over deploy/, hadolint on
## the Containerfile, buf, ruff, mypy and bandit.
lint: $(STAMP) lock-check semgrep checkov hadolint
	$(BIN)/buf lint gen/sluice.binpb --path sluice --config buf.yaml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/bandit -q -c pyproject.toml -r services scripts

## sbom: a CycloneDX JSON bill of materials of the locked runtime set (build/sbom.cdx.json).
sbom: $(STAMP)
	$(BIN)/python scripts/sbom.py --uv $(UV) --output build/sbom.cdx.json

## security: bandit, then pip-audit over the locked set. Needs PyPI's JSON API (the
## vulnerability service); when it cannot be reached this fails and says so.
security: $(STAMP)
	$(BIN)/bandit -q -c pyproject.toml -r services scripts
	$(BIN)/python scripts/audit.py --uv $(UV)

## bench: bounded load scenarios; prints req/s, latency, TTFT and CPU per request.
bench: $(STAMP)
	$(BIN)/python loadtest/bench.py

## bench-limiter: limiter decisions/s and p99, memory and Redis; 3-replica accuracy.
bench-limiter: $(STAMP)
	$(BIN)/python loadtest/limiter_bench.py

## bench-overload: 5x capacity, mixed classes, two tenants: goodput, p99 TTFT, fairness.
bench-overload: $(STAMP)
	$(BIN)/python loadtest/overload_bench.py

envoy-config: $(STAMP)
	$(BIN)/sluice envoy-config --descriptor /etc/sluice/sluice.binpb \
	  --certs-dir /etc/sluice/certs --output deploy/envoy/envoy.yaml

## k8s: re-render deploy/k8s/ from deploy/k8s/values.yaml and the suite's settings
## (a test fails while the committed copy is stale).
k8s: $(STAMP)
	$(BIN)/sluice k8s render --values deploy/k8s/values.yaml --output deploy/k8s/

## checkov: checkov over deploy/ (deploy/.checkov.yaml says why each skipped check is
## skipped). In a venv of its own from requirements/checkov.txt (hashed): its pins
## conflict with the dev group's.
CHECKOV_HOME := .checkov
CHECKOV      := $(CHECKOV_HOME)/bin/checkov
$(CHECKOV): requirements/checkov.txt $(UV)
	$(UV) venv --quiet --allow-existing $(CHECKOV_HOME)
	$(UV) pip install --quiet --python $(CHECKOV_HOME)/bin/python --require-hashes \
	  -r requirements/checkov.txt
	touch $@

checkov: $(CHECKOV)
	$(CHECKOV) --config-file deploy/.checkov.yaml
	@mkdir -p build/checkov && cp deploy/container/Containerfile build/checkov/Dockerfile
	$(CHECKOV) --framework dockerfile --file build/checkov/Dockerfile --compact --quiet \
	  --skip-download

## podman-deps: podman, buildah and debootstrap from Debian (root), only when missing.
podman-deps:
	@if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null \
	    || ! command -v runc >/dev/null || ! command -v catatonit >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    podman buildah debootstrap uidmap fuse-overlayfs slirp4netns runc catatonit; \
	fi

# The containers configuration this machine needs, computed from it (runtime, cgroups,
# ulimits, storage driver): scripts/containers_conf.py.
CONTAINERS_DIR := build/containers
PODMAN_ENV := CONTAINERS_CONF=$(CURDIR)/$(CONTAINERS_DIR)/containers.conf \
	CONTAINERS_STORAGE_CONF=$(CURDIR)/$(CONTAINERS_DIR)/storage.conf
PODMAN := $(PODMAN_ENV) podman
containers-conf: podman-deps
	$(PYTHON) scripts/containers_conf.py --output $(CONTAINERS_DIR)

VERSION  := $(shell $(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# The commit's time, not the build's: rebuilding one commit gives the same labels.
CREATED  := $(shell git log -1 --format=%cI 2>/dev/null)
# BASE_IMAGE: a localhost/ name is built here by debootstrap (no registry); elsewhere pass a
# pinned digest, e.g. BASE_IMAGE=docker.io/library/debian:bookworm-slim@sha256:...
BASE_IMAGE ?= localhost/debian:bookworm-min
IMAGE      ?= localhost/sluice:$(VERSION)
SOURCE     ?= $(shell git remote get-url origin 2>/dev/null || echo https://example.invalid/sluice)
# The CA bundle PyPI is reached with (pip's `cert`), for the build stage only.
CA_BUNDLE  ?= /etc/ssl/certs/ca-certificates.crt

base-image: containers-conf
	@case "$(BASE_IMAGE)" in localhost/*) $(PODMAN_ENV) scripts/make_base_image.sh $(BASE_IMAGE) ;; esac

## image: the suite's one image (deploy/container/Containerfile), built with podman.
image: base-image sbom
	cp $(CA_BUNDLE) build/ca-certificates.crt
	$(PODMAN) build --file deploy/container/Containerfile \
	  --build-arg BASE=$(BASE_IMAGE) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$(REVISION) --build-arg SOURCE=$(SOURCE) \
	  --build-arg CREATED=$(CREATED) \
	  --tag $(IMAGE) --tag localhost/sluice:latest .

## image-check: the image's `sluice --version` names this checkout's version and revision.
image-check: containers-conf
	@want="sluice $(VERSION) (revision $(REVISION))"; \
	got=$$($(PODMAN) run --rm --read-only $(IMAGE) --version); \
	echo "$$got"; [ "$$got" = "$$want" ] || { echo "expected: $$want" >&2; exit 1; }

## podman-smoke: the suite from the image under `podman kube play`
## (deploy/k8s/podman/suite-pod.yaml), smoke-tested through its Envoy; prints the time
## to SERVING. Minutes, so not part of `make test`.
podman-smoke: containers-conf $(STAMP)
	$(PODMAN_ENV) $(BIN)/python scripts/podman_smoke.py --image $(IMAGE)

## podman-e2e: from nothing to a smoke-tested suite under `podman kube play`: podman, the
## base image, the image, its version check, then podman-smoke. About 4 minutes on a
## fresh machine, 1 minute with the base image and layers cached. .ci/run runs it after
## `make test` (docs/kubernetes.md).
podman-e2e: image image-check podman-smoke

clean:
	rm -rf $(VENV) $(UV_HOME) $(CHECKOV_HOME) $(SEMGREP_HOME) build .run .pytest_cache .mypy_cache .ruff_cache

## semgrep (part of `make lint`): our own rule set, deploy/semgrep/ (the registry's rules
## cannot be fetched here): first each rule against its annotated test file (`--test`),
## then every rule over services/, which must have no finding (a justified exception
## carries `# nosemgrep: RULE` and a comment saying why). In a venv of its own from
## requirements/semgrep.txt (hashed): semgrep pins an older opentelemetry than the suite.
SEMGREP_HOME  := .semgrep-venv
SEMGREP       := $(SEMGREP_HOME)/bin/semgrep
SEMGREP_FLAGS := --metrics=off --disable-version-check --quiet
$(SEMGREP): requirements/semgrep.txt $(UV)
	$(UV) venv --quiet --allow-existing $(SEMGREP_HOME)
	$(UV) pip install --quiet --python $(SEMGREP_HOME)/bin/python --require-hashes \
	  -r requirements/semgrep.txt
	touch $@

semgrep: $(SEMGREP)
	$(SEMGREP) --test $(SEMGREP_FLAGS) deploy/semgrep
	$(SEMGREP) scan $(SEMGREP_FLAGS) --error --config deploy/semgrep --include "*.py" services

## hadolint: the Containerfile's lint (deploy/container/hadolint.yaml says why a rule is off).
hadolint: $(STAMP)
	$(BIN)/hadolint --config deploy/container/hadolint.yaml deploy/container/Containerfile

## scan: the pipeline's security scan: bandit, semgrep, checkov, hadolint, then pip-audit.
## pip-audit needs its vulnerability service; where it cannot be reached the scan says so
## in one line and goes on, unless REQUIRE_AUDIT=1 (CI with network) makes that a failure.
REQUIRE_AUDIT ?=
scan: $(STAMP) semgrep checkov hadolint
	$(BIN)/bandit -q -c pyproject.toml -r services scripts
	@$(BIN)/python scripts/audit.py --uv $(UV); rc=$$?; \
	if [ $$rc -eq 2 ] && [ -z "$(REQUIRE_AUDIT)" ]; then \
	  echo "scan: pip-audit NOT RUN (service unreachable); REQUIRE_AUDIT=1 makes this fail"; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi

## build: the environment from the lock, the wheel (build/dist/) and the SBOM.
build: $(STAMP) sbom
	$(UV) build --wheel --quiet --out-dir build/dist

## test-unit: the unit tests; some run promtool and amtool (alert rules, analysis queries),
## so on a fresh machine this stage installs them too, as test-integration does.
test-unit: $(STAMP) tools
	$(BIN)/python -m pytest -q tests/unit

## test-integration: real processes: services, Envoy, Redis, Prometheus (and the docs' tests).
test-integration: $(STAMP) tools js-deps
	$(BIN)/python -m pytest -q tests/integration tests/e2e tests/docs

## deploy-staging: staging is the suite from the image under `podman kube play`
## (`make podman-smoke`: up, SERVING, checked through its Envoy, stopped).
deploy-staging: image-check podman-smoke

## smoke: the suite's smoke set (tests/e2e/test_suite.py: every listener, gRPC, SSE, the
## OpenAI-compatible edge, 401s, one trace) against this build on the host, the way
## production will run it.
smoke: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e/test_suite.py

## deploy-production: production is a suite started by `sluice up` (PROD_CONFIG, its run
## dir PROD_RUN_DIR); the first deploy starts it, later ones roll this build out to it by
## `sluice rollout canary` (steps PROD_STEPS, PROD_ANALYSIS_S seconds each), which rolls
## back by itself when a gate fails (scripts/production.py, docs/pipeline.md).
PROD_CONFIG     ?= deploy/sluice.example.yaml
PROD_RUN_DIR    ?= .run/production
PROD_STEPS      ?= 5,25,50,100
PROD_ANALYSIS_S ?= 30
# A canary step is judged once the candidate has answered enough requests: a production
# without traffic of its own (this machine) gets PROD_TRAFFIC_RPS small completions/s
# through its edge during the rollout (0 turns it off where real traffic flows), with
# production's own key (made by the first deploy with `sluice keys create`, in
# PROD_RUN_DIR/production.key, owner-only), or PROD_TRAFFIC_KEY when set. Never the
# development key: production runs without dev mode.
PROD_TRAFFIC_RPS ?= 5
PROD_TRAFFIC_KEY ?=
export PROD_TRAFFIC_KEY
PRODUCTION := $(BIN)/python scripts/production.py --sluice $(BIN)/sluice \
	--config $(PROD_CONFIG) --run-dir $(PROD_RUN_DIR)
deploy-production: $(STAMP)
	$(PRODUCTION) deploy --label $(REVISION) --steps $(PROD_STEPS) \
	  --analysis-window $(PROD_ANALYSIS_S) --traffic-rps $(PROD_TRAFFIC_RPS)

## health-check: production's Envoy is ready and every router behind it passes its health check.
health-check: $(STAMP)
	$(PRODUCTION) health

## production-down: stop production. It is long-lived by design (the next deploy
## canary-rolls out to it), so the pipeline leaves it running; this SIGTERMs its
## `sluice up`, which stops every part in order (SIGKILL after 40 s).
production-down: $(STAMP)
	$(PRODUCTION) down

## pipeline: the 10 stages in order, each a make target (scripts/pipeline.py prints each
## stage's name and time, stops at the first failure, naming it, and ends with a table of
## every stage's time). PIPELINE_FAIL_STAGE=smoke fails that stage on purpose (proves
## nothing after it runs); PIPELINE_FROM=container starts at that stage (a re-run aid).
pipeline:
	$(PYTHON) scripts/pipeline.py

## publish-image, deploy-cluster: for CI systems with a registry and a cluster, never run
## here. REGISTRY (e.g. ghcr.io/acme) with podman already logged in to it (the CI's
## registry secret); KUBE_CONTEXT a context of the CI's kubeconfig secret; K8S_ENV staging
## or production (deploy/k8s/<env>/, rendered by `make k8s`). docs/pipeline.md.
REGISTRY     ?=
KUBE_CONTEXT ?=
K8S_ENV      ?= staging
publish-image: containers-conf
	@[ -n "$(REGISTRY)" ] || { echo "publish-image: set REGISTRY (the CI's registry secret)" >&2; exit 2; }
	$(PODMAN) push $(IMAGE) docker://$(REGISTRY)/sluice:$(VERSION)-$(REVISION)

deploy-cluster:
	@[ -n "$(KUBE_CONTEXT)" ] || { echo "deploy-cluster: set KUBE_CONTEXT (the CI's kubeconfig secret)" >&2; exit 2; }
	kubectl --context "$(KUBE_CONTEXT)" apply --recursive -f deploy/k8s/$(K8S_ENV)/

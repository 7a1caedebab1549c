# The two commands of the README:  make demo  (the whole pipeline on embedded servers)
#                                  make test  (the test suite)
# Both install what they need: a virtualenv in .venv and, when missing, PostgreSQL's server
# (and for the tests OpenSSH's server, which the tunnel tests start on loopback).
VENV ?= .venv
PYTHON ?= python3
DEMO_ARGS ?=

.PHONY: demo test install postgres sshd clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

postgres:
	@scripts/ensure-postgres

sshd:
	@scripts/ensure-sshd

demo: install postgres
	$(VENV)/bin/loader demo $(DEMO_ARGS)

test: install postgres sshd
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) staging .pytest_cache

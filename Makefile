# The two commands of the README:  make demo  (the whole pipeline on embedded servers)
#                                  make test  (the test suite)
# Both install what they need: a virtualenv in .venv and, when missing, PostgreSQL's server.
VENV ?= .venv
PYTHON ?= python3
DEMO_ARGS ?=

.PHONY: demo test install postgres clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

postgres:
	@scripts/ensure-postgres

demo: install postgres
	$(VENV)/bin/loader demo $(DEMO_ARGS)

test: install postgres
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) staging .pytest_cache

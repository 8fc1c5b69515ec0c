# The two commands: `make run` (the demo on 127.0.0.1:$PORT) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 5000
BIN     = $(VENV)/bin
# The PostgreSQL server the tests use (this machine runs one; .ci/run makes sure of it).
export TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test
FLASK   = $(BIN)/flask --app wsgi

.PHONY: run test lint wheel clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,postgres]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,postgres,test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	@$(FLASK) init-db
	@$(FLASK) seed-demo --if-empty
	@echo
	@echo "Demo intranet on http://127.0.0.1:$(PORT)/  (password for every account: demo-password)"
	@echo "  admin        built-in administrator (sysadmin and People administrator)"
	@echo "  sysadmin     sysadmin: License, Summary"
	@echo "  peopleadmin  People administrator: People"
	@echo "  jennifer     ordinary user"
	@echo
	$(BIN)/gunicorn --worker-class gthread --workers 2 --threads 4 --timeout 120 \
		--bind 127.0.0.1:$(PORT) 'wsgi:create_app()'

test: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

wheel: $(BIN)/python
	$(BIN)/pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info

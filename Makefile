# The two commands: `make run` (the demo on 127.0.0.1:$PORT) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 5000
BIN     = $(VENV)/bin
# The PostgreSQL server the tests use (this machine runs one; .ci/run makes sure of it).
export TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test
FLASK   = $(BIN)/flask --app wsgi

.PHONY: run test lint wheel clean run-fst run-fab demo-license

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,postgres]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,postgres,test,examples]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-examples

$(VENV)/.installed-examples: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server,postgres,examples]'
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

# Example hosts (examples/): the extension mounted in a Flask-Security-Too app and in a
# Flask-AppBuilder app. Each keeps its database and demo vendor key in its own instance/.
FST = $(BIN)/flask --app examples.fst_host.app
FAB = $(BIN)/flask --app examples.fab_host.app

run-fst: $(VENV)/.installed-examples
	@$(FST) init-host
	@$(MAKE) --no-print-directory demo-license HOST_FLASK="$(FST)" INSTANCE=examples/fst_host/instance SITE=fst.example.com
	@$(FST) seed-host
	@echo
	@echo "Flask-Security-Too host on http://127.0.0.1:$(PORT)/  (password for every account: demo-password)"
	@echo "  admin (admin role), sysadmin (sysadmin role), peopleadmin (people-admin role), jennifer"
	$(FST) run --host 127.0.0.1 --port $(PORT)

run-fab: $(VENV)/.installed-examples
	@$(FAB) init-host
	@$(MAKE) --no-print-directory demo-license HOST_FLASK="$(FAB)" INSTANCE=examples/fab_host/instance SITE=fab.example.com
	@$(FAB) seed-host
	@echo
	@echo "Flask-AppBuilder host on http://127.0.0.1:$(PORT)/  (password for every account: demo-password)"
	@echo "  admin (Admin role), sysadmin (Sysadmin role), peopleadmin (People Admin role), jennifer (Public)"
	$(FAB) run --host 127.0.0.1 --port $(PORT)

# A vendor key pair and a signed demo license, made and installed with `flask licenses`.
demo-license:
	@test -f $(INSTANCE)/vendor-private.pem || $(HOST_FLASK) licenses keygen \
		--private-key $(INSTANCE)/vendor-private.pem --public-key $(INSTANCE)/vendor-public.pem
	@$(HOST_FLASK) licenses status >/dev/null 2>&1 || { \
		$(HOST_FLASK) licenses issue --private-key $(INSTANCE)/vendor-private.pem \
			--out $(INSTANCE)/license.txt --set "Registered-To=Example Corporation (demo)" \
			--set Host-Id=DEMO-0002 --set "Host-Name=$(SITE)" --set Issued=$$(date -u +%F) \
			--set Expires=Never --set MAX_USERS=10 --set MAX_EXTRANET_USERS=0 \
			--set MAX_READONLY_USERS=0 \
		&& $(HOST_FLASK) licenses install $(INSTANCE)/license.txt; }

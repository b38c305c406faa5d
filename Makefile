# cloudmail: `make run` sets everything up and starts the server on its embedded defaults
# (built-in directory, SQLite, self-signed TLS, data in ./data) with conf/dev.toml's unprivileged
# ports; `make test` installs what the tests need and runs the whole suite.

VENV ?= .venv
CONFIG ?= conf/dev.toml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
PYTEST_ARGS ?=

.PHONY: run install system-packages test-packages test clean

run: install
	$(VENV)/bin/twistd -n --pidfile= cloudmail --config $(CONFIG)

install: $(VENV)/.installed

system-packages:
	@python3 -c 'import venv, ensurepip' 2>/dev/null || \
	  { $(APT) update -qq && $(APT) install -y -qq python3 python3-venv python3-pip; }

$(VENV)/.installed: setup.cfg pyproject.toml | system-packages
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

test-packages:
	@{ command -v slapd >/dev/null || [ -x /usr/sbin/slapd ]; } && command -v ldapsearch >/dev/null \
	  && command -v swaks >/dev/null && [ -x /usr/sbin/smtp-sink ] \
	  && command -v sieve-connect >/dev/null || \
	  { $(APT) update -qq && $(APT) install -y -qq slapd ldap-utils swaks postfix sieve-connect; }

test: install test-packages
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

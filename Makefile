# Two commands on a fresh machine: `make run` (try it) and `make test` (check everything).
.PHONY: setup run test bench install uninstall clean

setup:
	@scripts/setup

run: setup
	@scripts/dev-run

test: setup
	@scripts/test

bench: setup
	.venv/bin/python benchmarks/catchup.py

install:
	scripts/install

uninstall:
	scripts/uninstall

clean:
	rm -rf var .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis

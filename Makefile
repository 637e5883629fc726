# The two entry points: `make demo` runs the whole pipeline on a synthesized corpus, `make test` the suite.
# Both set up the environment first (bin/setup.sh is idempotent and cached).
SHELL := /bin/bash
.PHONY: setup demo test

setup:
	bash bin/setup.sh

demo: setup
	bash bin/demo.sh

test: setup
	bash bin/test.sh

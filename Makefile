# Both targets install first (scripts/setup.sh: Debian packages, then .venv) and run inside .venv.
.PHONY: demo test

export PATH := $(CURDIR)/.venv/bin:$(PATH)

demo:
	bash scripts/setup.sh classifier
	bash scripts/demo.sh

test:
	bash scripts/setup.sh classifier test
	ruff check .
	python -m pytest -q

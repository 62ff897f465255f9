# Two commands on a fresh machine (Python 3.11 + make): `make demo` and `make test`.
# Both create the dev virtual environment first (.venv, pinned by constraints-dev.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: env demo test lint format docs docs-serve clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints-dev.txt .ci/dev_site/fdconv_dev_torchvision_cpu.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints-dev.txt -e '.[dev,train,viz,onnx,docs,detection]'
	cp .ci/dev_site/fdconv_dev_torchvision_cpu.py .ci/dev_site/fdconv_dev_torchvision_cpu.pth \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
	touch $@

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fdconv-zoo demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# ruff, configured in pyproject.toml; `make format` rewrites what `make lint` would reject.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The documentation site (MkDocs + Material) into site/, offline; warnings are errors.
docs: $(STAMP)
	HF_HUB_OFFLINE=1 NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --clean

docs-serve: $(STAMP)
	HF_HUB_OFFLINE=1 NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) .pytest_cache site

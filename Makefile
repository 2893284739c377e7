# The two commands of the README. Both do the whole set-up first (scripts/setup.sh).
.PHONY: setup app test

setup:
	bash scripts/setup.sh

app: setup
	GRADIO_ANALYTICS_ENABLED=False python app.py

test: setup
	GRADIO_ANALYTICS_ENABLED=False python -m pytest -q -ra

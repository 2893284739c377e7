# The two commands of the README. Both do the whole set-up first (scripts/setup.sh).
.PHONY: setup app test

setup:
	bash scripts/setup.sh

# make app ARGS="--data out/d3s --results results": what the app offers (python app.py --help).
app: setup
	GRADIO_ANALYTICS_ENABLED=False python app.py $(ARGS)

test: setup
	GRADIO_ANALYTICS_ENABLED=False python -m pytest -q -ra

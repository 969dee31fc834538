.PHONY: demo test bench setup

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench: setup
	.venv/bin/python benchmarks/bench_mole_decode.py

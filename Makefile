# CLIP-RS developer commands. `make up` and `make test` are the two that matter.
SHELL := /bin/bash
PY := .venv/bin/python
export CLIPRS_DATABASE_URL ?= postgresql://postgres:postgres@127.0.0.1:5432/cliprs
export CLIPRS_TEST_DATABASE_URL ?= postgresql://postgres:postgres@127.0.0.1:5432/postgres

.PHONY: help install infra up down test lint format migrate demo-tiles

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: ## Install system packages, the Python venv and the web bundle (idempotent)
	@deploy/local/bootstrap.sh

infra: ## Start PostgreSQL and Redis on loopback if they are not running
	@deploy/local/infra.sh start

up: install infra ## Bring the whole platform up locally, ingest the demo and Landsat areas, print the URL
	@$(PY) -m cliprs_tools.devstack up

down: ## Stop what `make up` started, and nothing else
	@$(PY) -m cliprs_tools.devstack down
	@deploy/local/infra.sh stop

test: install infra ## Run every test (lint, unit, end to end) against real PostGIS and Redis
	@$(PY) -m ruff check .
	@$(PY) -m pytest

lint: install ## Check style and formatting
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

format: install ## Format the code
	@$(PY) -m ruff format .

migrate: install infra ## Create the database if needed and apply migrations
	@$(PY) -m cliprs.db.migrate

demo-tiles: install ## Render the Sentinel-2 demo area into var/demo-tiles
	@$(PY) -m cliprs_tools.demo --out var/demo-tiles --zooms 10-14

.PHONY: bench-tiler
bench-tiler: install infra ## Tiler throughput: tiles/s from a local tile server and the cache, vs a naive fetch (-> benchmarks/results/tiler.json)
	@$(PY) benchmarks/bench_tiler.py

.PHONY: bench-embed
bench-embed: install infra ## Embedder throughput: windows/s end to end and encoder alone (tiny and ViT-B/32-sized CLIP) (-> benchmarks/results/embed.json)
	@$(PY) benchmarks/bench_embed.py

.PHONY: eval
eval: install ## Evaluate CLIP models side by side (EVAL_ARGS="--model A --model B --retrieval DIR/dataset_rsicd.json")
	@$(PY) -m cliprs_tools.evaluation $(EVAL_ARGS)

.PHONY: finetune
finetune: install ## Fine-tune a CLIP on captions (FINETUNE_ARGS="--data DIR/dataset_rsicd.json --model BASE")
	@$(PY) -m cliprs_tools.finetune $(FINETUNE_ARGS)

.PHONY: bench-finetune
bench-finetune: install ## Fine-tuning and evaluation throughput (tiny and ViT-B/32 shapes) and a toy run's gain (-> benchmarks/results/finetune.json)
	@$(PY) benchmarks/bench_finetune.py

.PHONY: bench-search
bench-search: install infra ## Search at 1M/3M/10M windows (one index grown area by area): p50/p99, QPS x8, recall@10 image/text, RSS per window, hot swap of 1,000 tiles (1M+3M: 43 min on 2 cores at load 6-9; 1M/3M/10M: 21 min at load 1.5 with 200 swap tiles; ~25 GB disk at 10M)
	@$(PY) benchmarks/bench_search.py

.PHONY: bench-web
bench-web: install infra ## Web map in headless Chromium: page weight, load time, search and slider latency vs the API
	@$(PY) benchmarks/bench_web.py

.PHONY: soak
soak: install infra ## Ingest areas while workers are killed and Redis/PostgreSQL restarted (SOAK_ARGS="--minutes 10"): windows lost and duplicates must be 0
	@$(PY) benchmarks/soak.py $(SOAK_ARGS)

.PHONY: bench-detect
bench-detect: install infra ## Detect: train + score 3M synthetic windows from float16 shards (target <= 10 s) and the water precision/recall on the demo scene
	@$(PY) benchmarks/bench_detect.py

.PHONY: bench-clouds
bench-clouds: install infra ## Cloud detector on the cloudy Landsat 8 scene: per-window precision/recall vs its BQA band, false alarms on a clear scene, ms per tile
	@$(PY) benchmarks/bench_clouds.py

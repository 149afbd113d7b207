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

up: install infra ## Bring the whole platform up locally, ingest the demo area, print the URL
	@$(PY) -m cliprs.devstack up

down: ## Stop what `make up` started, and nothing else
	@$(PY) -m cliprs.devstack down
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
	@$(PY) -m cliprs_tiler.demo --out var/demo-tiles --zooms 10-14

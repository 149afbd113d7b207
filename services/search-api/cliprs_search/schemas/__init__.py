"""The search-api's request and response models, one module per feature (what OpenAPI
documents and FastAPI checks)."""

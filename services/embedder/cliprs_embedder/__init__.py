"""CLIP-RS embedder service: batch window embedding (Celery) and online query embedding (HTTP)."""

"""CLIP-RS search-api: the public REST gateway."""

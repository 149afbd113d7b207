"""The ranking pipeline behind every search: the index's candidates for a vector, checked
against the filter in PostGIS (`cliprs_search.filters`), collapsed and merged into groups
(`merge`), paged (`cursor`) and judged (`confidence`). `pipeline.run_search` is the entry point."""

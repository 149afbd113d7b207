"""The search-api's logic as plain functions (no FastAPI objects): each takes the app's
`cliprs_search.context.Context` and plain values, raises `cliprs.errors` domain errors, and
returns a response model of `cliprs_search.schemas`. SQL lives in `cliprs_search.repository`."""

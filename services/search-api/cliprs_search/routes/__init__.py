"""The search-api's routers, one per part of the API; handlers parse the request, call
`cliprs_search.service` and return its response model."""

"""The search-api's routers, one per part of the API."""

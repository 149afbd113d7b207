"""What every CLIP-RS HTTP service shares: the one error map, health and readiness, response schemas.

Services build on these and nothing else of each other: ``install_error_handlers`` once per app,
``readiness`` for ``/readyz``, the models in ``schemas`` as response models.
"""

from cliprs_http.errors import (
    ERROR_STATUS,
    RETRY_AFTER_S,
    error_body,
    install_error_handlers,
    status_for,
)
from cliprs_http.health import Check, health_router, readiness, readiness_response, redis_ping, run_checks
from cliprs_http.schemas import ERROR_RESPONSES, ErrorResponse, Health, Readiness

__all__ = [
    "ERROR_RESPONSES",
    "ERROR_STATUS",
    "RETRY_AFTER_S",
    "Check",
    "ErrorResponse",
    "Health",
    "Readiness",
    "error_body",
    "health_router",
    "install_error_handlers",
    "readiness",
    "readiness_response",
    "redis_ping",
    "run_checks",
    "status_for",
]

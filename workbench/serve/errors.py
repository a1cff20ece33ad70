"""The server's one error type: an HTTP status and a message that names the fix, sent as OpenAI's error JSON."""

__all__ = ["ApiError", "error_body"]


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx), ``message`` (what was wrong and the fix), the offending
    ``param`` where there is one, and OpenAI's error ``type``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: "str | None" = None,
        type: "str | None" = None,
        headers: "dict[str, str] | None" = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers
        self.type = type or _TYPES.get(status, "invalid_request_error")


_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "server_busy",
}


def error_body(message: str, type: str = "invalid_request_error", param: "str | None" = None) -> dict:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": None}}

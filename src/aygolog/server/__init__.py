"""The Log API service: `create_log_api(settings)` builds the Litestar app."""

from aygolog.server.app import create_log_api

__all__ = ["create_log_api"]

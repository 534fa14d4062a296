"""Serving learned prompts: `Engine` (batching over one frozen backbone) and the OpenAI-compatible app."""

from .engine import Engine, load_prompts
from .served import ServedPrompt

__all__ = ["Engine", "ServedPrompt", "check_limits", "create_app", "load_prompts", "make_server", "serve"]


def create_app(*args, **kwargs):
    from .app import create_app as _create

    return _create(*args, **kwargs)


def make_server(*args, **kwargs):
    from .server import make_server as _make

    return _make(*args, **kwargs)


def check_limits(**limits: float) -> None:
    """Refuse a limit that is not positive (e.g. max_batch=0 would serve nothing), named as its CLI flag."""
    for name, value in limits.items():
        if value <= 0:
            from ..errors import ConfigError

            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be positive")


def serve(engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_body_bytes: int = 1_000_000, max_tokens_limit: int = 512, max_inputs: int = 256,
          max_request_rows: int = 64, request_timeout: float = 60.0, body_timeout: float = 30.0,
          max_image_pixels: int = 4096 * 4096, max_decoded_mb: int = 256, log_level: str = "warning") -> None:
    """Run the server for `engine` (from `prompttune.api.serving_engine`, which picks it from the artifacts'
    kind) in the foreground (uvicorn) until interrupted (SIGINT/SIGTERM); the engine is closed on the way out."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        from ..errors import ConfigError

        engine.close()
        raise ConfigError("prompttune serve needs the serve extra: pip install 'prompttune[serve]'") from None
    try:
        app = create_app(engine, api_key=api_key, max_body_bytes=max_body_bytes, max_tokens_limit=max_tokens_limit,
                         max_inputs=max_inputs, max_request_rows=max_request_rows, request_timeout=request_timeout,
                         body_timeout=body_timeout, max_image_pixels=max_image_pixels,
                         max_decoded_bytes=max_decoded_mb * 2**20)
        make_server(app, engine, host=host, port=port, log_level=log_level, header_timeout=body_timeout).run()
    finally:
        engine.close()

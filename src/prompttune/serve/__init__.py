"""Serving learned prompts: `Engine` (batching over one frozen backbone) and the OpenAI-compatible app."""

from .engine import Engine, ServedPrompt, load_prompts

__all__ = ["Engine", "ServedPrompt", "create_app", "load_prompts", "serve"]


def create_app(*args, **kwargs):
    from .app import create_app as _create

    return _create(*args, **kwargs)


def serve(backbone, artifacts: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch: int = 64, max_body_bytes: int = 1_000_000, max_tokens_limit: int = 512,
          log_level: str = "warning") -> None:
    """Run the server in the foreground (uvicorn) until interrupted."""
    try:
        import uvicorn
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("prompttune serve needs the serve extra: pip install 'prompttune[serve]'") from None
    from ..models.clip import ClipBackbone

    if isinstance(backbone, ClipBackbone):
        from .clip import ClipEngine, load_clip_prompts

        engine = ClipEngine(backbone, load_clip_prompts(backbone, artifacts), max_batch=max_batch)
    else:
        engine = Engine(backbone, load_prompts(backbone, artifacts), max_batch=max_batch)
    app = create_app(engine, api_key=api_key, max_body_bytes=max_body_bytes, max_tokens_limit=max_tokens_limit)
    uvicorn.run(app, host=host, port=port, log_level=log_level)

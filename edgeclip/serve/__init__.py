"""``edgeclip serve``: an embedding and zero-shot HTTP service (needs ``edgeclip[serve]``).

Endpoints: OpenAI-style ``POST /v1/embeddings`` (with infinity's ``modality``),
``POST /v1/classify``, ``GET /v1/models``, ``GET /health``, ``GET /metrics``, Immich's
``POST /predict`` and ``GET /ping``, and a web page at ``/``. See docs/serve.md.

Programmatic use (an ASGI app for any server)::

    from edgeclip.serve.app import create_app
    from edgeclip.serve.service import ServeConfig
    from edgeclip.serve.worker import ModelSpec

    app = create_app(ServeConfig(spec=ModelSpec("tinyclip-8m"), names=("tinyclip-8m",)))

Nothing is imported here, so ``import edgeclip.serve`` costs nothing and needs no extra.
"""

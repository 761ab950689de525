"""What answers: one OpenAI ingress and one engine deployment per checkpoint, on Ray Serve.

Serve's proxy reads the environment once, when it starts, and runs in a process Ray starts: the callback that
removes client timeout headers (serve_apps/proxy_headers.py) is named here, before this project starts Ray.
"""

import os as _os

_os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "serve_apps.proxy_headers.proxy_middlewares")

"""The bundled checkpoint/restore engine (``python -m engine``).

Pure Python over raw Linux syscalls (ctypes). Never imports the harness (zdtm/, flavors/).
Layers: ``engine.kernel`` (syscalls, ptrace, injection), ``engine.proc`` (/proc parsers),
``engine.images`` (image format), ``engine.dump`` and ``engine.restore``.
"""

"""Serving on Triton: config generation, the Python-backend models, and the server launcher.

Each `model_repository/<model>/1/model.py` only imports its class from here; the logic lives in
the shared core so that it is tested without a server and used the same way by every model.
"""

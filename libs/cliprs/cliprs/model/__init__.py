"""The CLIP model loader shared by the embedder, the evaluation tools and the tests."""

from cliprs.model.encoder import ClipEncoder, ModelInfo
from cliprs.model.loader import load_encoder

__all__ = ["ClipEncoder", "ModelInfo", "load_encoder"]

"""The CLIP model loader shared by the embedder, the evaluation tools and the tests."""

from cliprs_model.encoder import ClipEncoder, ModelInfo
from cliprs_model.loader import BACKENDS, load_encoder, register_backend
from cliprs_model.preprocess import ImageTransform

__all__ = ["BACKENDS", "ClipEncoder", "ImageTransform", "ModelInfo", "load_encoder", "register_backend"]

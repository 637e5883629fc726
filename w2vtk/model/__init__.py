"""wav2vec 2.0: config, building blocks, quantizer and the assembled model."""
from w2vtk.model.config import ARCH_KEYS, ModelConfig, base_config, large_config, tiny_config
from w2vtk.model.quantizer import GumbelVectorQuantizer, QuantizerOutput
from w2vtk.model.wav2vec2 import (EncoderOutput, FeatureOutput, Wav2Vec2Model, base, build_model, large,
                                  model_from_checkpoint, normalize_waveform, tiny)

__all__ = [
    "ARCH_KEYS", "EncoderOutput", "FeatureOutput", "GumbelVectorQuantizer", "ModelConfig", "QuantizerOutput",
    "Wav2Vec2Model", "base", "base_config", "build_model", "large", "large_config", "model_from_checkpoint",
    "normalize_waveform", "tiny", "tiny_config",
]

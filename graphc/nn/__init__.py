"""graphc.nn: layers, losses, metrics, a compiled training step and a Keras-like Model."""
from .losses import (LOSSES, METRICS, accuracy, binary_accuracy, binary_cross_entropy,
                     binary_cross_entropy_with_logits, cross_entropy, mae, mse, r2)
from .modules import (GELU, BatchNorm1d, Dropout, LayerNorm, LeakyReLU, Linear, Module, ReLU,
                      Sequential, Sigmoid, Softmax, Tanh, bind, init_weight)
from .conv import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv1d, Conv2d, ConvTranspose2d,
                   Embedding, Flatten, MaxPool2d)
from .model import DataLoader, History, Model
from .recurrent import GRU, LSTM, RNN
from .transformer import MultiheadAttention, TransformerEncoder, TransformerEncoderLayer
from .train import Predict, TrainStep

__all__ = ["Module", "Linear", "Sequential", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU",
           "Softmax", "LayerNorm", "BatchNorm1d", "Dropout", "bind", "init_weight", "mse", "mae",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
           "accuracy", "binary_accuracy", "r2", "LOSSES", "METRICS", "TrainStep", "Predict",
           "Model", "DataLoader", "History", "MultiheadAttention", "TransformerEncoderLayer",
           "TransformerEncoder", "Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "Flatten", "BatchNorm2d", "Embedding", "RNN", "LSTM", "GRU"]

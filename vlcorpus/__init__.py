"""vlcorpus: DeepSeek-VL-style vision-language pretraining data, and the trainer that proves it works."""

__version__ = "0.1.0"

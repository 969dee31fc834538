"""Audio data: decoding Audio values and folders of clips without torchcodec, and resampling."""

from .conv_fuser import AddFuser, ConvFuser

__all__ = ["AddFuser", "ConvFuser"]

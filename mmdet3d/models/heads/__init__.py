from .centerhead import CenterHead, SeparateHead

__all__ = ["CenterHead", "SeparateHead"]

from .generalized_resnet import GeneralizedResNet
from .resnet import BasicBlock, Bottleneck, LoadReport, ResNet, TinyResNet, load_pretrained
from .second import SECOND

__all__ = ["BasicBlock", "Bottleneck", "GeneralizedResNet", "LoadReport", "ResNet", "SECOND", "TinyResNet", "load_pretrained"]

"""Models written in the project (torchvision does not import beside the CPU torch wheel)."""
from .resnet import resnet18, resnet50
from .gpt import GPTBlock
from .small_cnn import SmallCNN
from .unet import UNet

__all__ = ["resnet18", "resnet50", "SmallCNN", "UNet", "GPTBlock"]

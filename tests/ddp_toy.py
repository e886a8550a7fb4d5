"""A toy task importable by a torchrun subprocess (``--task tests.ddp_toy:build_task``)."""
from tests.test_train import BlurTask


def build_task(gan: bool = False):
    return BlurTask(gan=bool(gan))

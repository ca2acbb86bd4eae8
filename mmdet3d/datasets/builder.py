from mmdet3d.utils.registry import Registry

DATASETS = Registry("dataset")
PIPELINES = Registry("pipeline")


def build_dataset(cfg, **default_args):
    return DATASETS.build(cfg, **default_args)

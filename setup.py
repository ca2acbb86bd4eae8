from setuptools import find_packages, setup

setup(
    name="mmdet3d-distill",
    version="0.1.0",
    description="Multi-modal knowledge distillation for BEV 3D object detection (BEVFusion design)",
    python_requires=">=3.10",
    packages=find_packages(include=["mmdet3d", "mmdet3d.*"]),
    install_requires=[
        "torch",
        "torchpack",
        "nuscenes-devkit",
        "numpy",
        "pillow",
        "tqdm",
        "pyyaml",
        "pyquaternion",
    ],
)

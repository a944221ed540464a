import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).parents[1]


def load() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_cluster_yaml_validates_against_the_schema_inside_ray():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = load()
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs
    assert set(config["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    assert config["head_node_type"] == "head"


def test_a_broken_cluster_yaml_is_rejected():
    config = load()
    config["available_node_types"]["cpu_worker"]["resources"] = {"CPU": "many"}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def test_nodes_install_the_project_and_its_system_packages():
    config = load()
    assert any("scripts/setup.sh" in c for c in config["setup_commands"])
    assert "." in config["file_mounts"].values()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for package in ("chromium", "latexml", "fonts-noto-cjk"):
        assert package in setup


# Node images -> the Python 3 their distribution ships (what scripts/setup.sh builds the .venv with). An image not in
# the table fails the test: add it with its Python version.
UBUNTU = "resolve:ssm:/aws/service/canonical/ubuntu/server/{}/stable/current/amd64/hvm/ebs-gp3/ami-id"
DLAMI = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-{}/latest/ami-id"
IMAGE_PYTHON = {
    UBUNTU.format("22.04"): (3, 10),
    UBUNTU.format("24.04"): (3, 12),
    DLAMI.format("22.04"): (3, 10),
    DLAMI.format("24.04"): (3, 12),
    "resolve:ssm:/aws/service/debian/release/bookworm/latest/amd64": (3, 11),  # Debian 12
    "resolve:ssm:/aws/service/debian/release/bullseye/latest/amd64": (3, 9),  # Debian 11
    "ami-0b8c6b923777519db": (3, 10),  # Ubuntu 22.04 in us-west-2, the image this file named before
}


def required_python() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups()
    return int(major), int(minor)


def too_old(config: dict) -> list[str]:
    """The node types whose image is unknown or ships a Python older than the project's minimum."""
    need, bad = required_python(), []
    for name, node in config["available_node_types"].items():
        image = node["node_config"]["ImageId"]
        if IMAGE_PYTHON.get(image, (0, 0)) < need:
            bad.append(f"{name}: {image} (Python {IMAGE_PYTHON.get(image, 'unknown')}, need {need})")
    return bad


def test_every_node_image_ships_the_python_the_project_needs():
    assert too_old(load()) == []
    old = load()
    old["available_node_types"]["cpu_worker"]["node_config"]["ImageId"] = "ami-0b8c6b923777519db"
    assert too_old(old) == ["cpu_worker: ami-0b8c6b923777519db (Python (3, 10), need (3, 11))"]


def test_gpu_workers_declare_their_gpus_and_the_dashboard_stays_private():
    config = load()
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and "nvidia" in gpu["node_config"]["ImageId"]
    for node in ("cpu_worker", "gpu_worker"):
        assert config["available_node_types"][node]["node_config"]["IamInstanceProfile"]  # s3:// without keys
    assert all("--dashboard-host=0.0.0.0" not in c for c in config["head_start_ray_commands"])

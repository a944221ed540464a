import copy
import json
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
    assert set(config["available_node_types"]) == {"head", "cpu_worker"}
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

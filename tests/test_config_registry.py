import pytest

from mmdet3d.utils.config import ConfigError, apply_overrides, load_config, resolve_references
from mmdet3d.utils.registry import Registry, build_from_cfg


@pytest.fixture
def config_tree(tmp_path):
    (tmp_path / "default.yaml").write_text("seed: 0\nvoxel_size: [0.8, 0.8, 8]\nmodel:\n  type: Net\n  width: 8\n")
    sub = tmp_path / "synthetic"
    sub.mkdir()
    (sub / "default.yaml").write_text(
        "point_cloud_range: [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]\n"
        "model:\n  width: 16\n  range: ${point_cloud_range}\n  voxel: ${voxel_size}\n"
        "run_name: seed${seed}-w${model.width}\n"
    )
    exp = sub / "teacher.yaml"
    exp.write_text("model:\n  depth: 3\n")
    return exp


def test_inheritance_and_references(config_tree):
    cfg = load_config(str(config_tree))
    assert cfg["seed"] == 0
    assert cfg["model"] == {
        "type": "Net",
        "width": 16,
        "depth": 3,
        "range": [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],
        "voxel": [0.8, 0.8, 8],
    }
    assert cfg["run_name"] == "seed0-w16"


def test_overrides_are_typed_and_applied_before_references(config_tree):
    cfg = load_config(str(config_tree), ["--model.width", "32", "--seed=7", "--voxel_size", "[0.4, 0.4, 8]"])
    assert cfg["model"]["width"] == 32 and isinstance(cfg["model"]["width"], int)
    assert cfg["model"]["voxel"] == [0.4, 0.4, 8]
    assert cfg["run_name"] == "seed7-w32"
    cfg = load_config(str(config_tree), ["--model.type", "null"])
    assert cfg["model"]["type"] is None


def test_override_of_the_wrong_kind_names_key_and_kind():
    cfg = {"max_epochs": 6, "lr": 0.1, "fp16": False, "name": "run", "size": [1, 2], "opt": {"a": 1}, "ref": "${max_epochs}", "none": None}
    with pytest.raises(ConfigError) as e:
        apply_overrides(dict(cfg), ["--max_epochs", "abc"])
    assert str(e.value) == "override --max_epochs expects an integer, got 'abc'; now 6"
    with pytest.raises(ConfigError, match=r"--max_epochs expects an integer \(needs a whole number\), got '0.5'"):
        apply_overrides(dict(cfg), ["--max_epochs", "0.5"])
    with pytest.raises(ConfigError, match=r"--fp16 expects a boolean \(true or false\), got '1'"):
        apply_overrides(dict(cfg), ["--fp16", "1"])
    with pytest.raises(ConfigError, match=r"--size expects a list, got '3'; now a list"):
        apply_overrides(dict(cfg), ["--size", "3"])
    with pytest.raises(ConfigError, match=r"--opt expects a mapping"):
        apply_overrides(dict(cfg), ["--opt", "[1]"])
    with pytest.raises(ConfigError, match=r"--name expects a string, got '\[1, 2\]'"):
        apply_overrides(dict(cfg), ["--name", "[1, 2]"])
    out = apply_overrides(dict(cfg), ["--lr", "1", "--name", "2024", "--ref", "[3]", "--none", "{a: 1}", "--size", "null", "--opt.a", "2"])
    assert out["lr"] == 1.0 and isinstance(out["lr"], float) and out["name"] == "2024"
    assert out["ref"] == [3] and out["none"] == {"a": 1} and out["size"] is None and out["opt"] == {"a": 2}
    assert apply_overrides(dict(cfg), ["--lr", "1e-3"])["lr"] == 1e-3  # yaml 1.1 reads 1e-3 as a string


def test_override_that_is_not_valid_yaml_fails():
    with pytest.raises(ConfigError, match=r"override --size: value '\[1, 2' is not valid yaml"):
        apply_overrides({"size": [1, 2]}, ["--size", "[1, 2"])
    assert apply_overrides({"root": "data/"}, ["--root", "a: b: c"])["root"] == "a: b: c"  # a string key takes the text


def test_unknown_override_names_closest_keys(config_tree):
    with pytest.raises(ConfigError) as e:
        load_config(str(config_tree), ["--model.widht", "3"])
    assert "model.widht" in str(e.value) and "model.width" in str(e.value)


def test_missing_file_and_bad_reference(tmp_path, config_tree):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="model.widthh"):
        resolve_references({"model": {"width": 1}, "x": "${model.widthh}"})
    with pytest.raises(ConfigError, match="cycle"):
        resolve_references({"a": "${b}", "b": "${a}"})
    with pytest.raises(ConfigError, match="no value"):
        apply_overrides({"a": 1}, ["--a"])


def test_registry_build_and_errors():
    reg = Registry("thing")

    @reg.register_module()
    class Conv:
        def __init__(self, channels, stride=1):
            self.channels, self.stride = channels, stride

    obj = build_from_cfg({"type": "Conv", "channels": 4}, reg, stride=2)
    assert (obj.channels, obj.stride) == (4, 2)
    assert build_from_cfg(None, reg) is None
    with pytest.raises(KeyError, match="already registered"):
        reg.register_module()(Conv)
    with pytest.raises(KeyError) as e:
        build_from_cfg({"type": "Cnv"}, reg)
    assert "Registered names: Conv" in str(e.value) and "Did you mean Conv" in str(e.value)
    with pytest.raises(KeyError, match="no 'type'"):
        build_from_cfg({"channels": 3}, reg)
    with pytest.raises(TypeError, match="'Conv' failed"):
        build_from_cfg({"type": "Conv", "kernel": 3, "channels": 1}, reg)


def test_empty_default_and_non_mapping_file(config_tree):
    (config_tree.parent / "default.yaml").write_text("")
    assert load_config(str(config_tree))["model"]["depth"] == 3
    (config_tree.parent / "default.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="default.yaml must hold a mapping"):
        load_config(str(config_tree))


def test_override_of_a_list_element_by_index():
    cfg = {"losses": [{"type": "A", "weight": 1.0}, {"type": "B", "weight": 100.0}], "size": [1, 2]}
    out = apply_overrides(cfg, ["--losses.1.weight", "0.5", "--size.0", "7"])
    assert out["losses"] == [{"type": "A", "weight": 1.0}, {"type": "B", "weight": 0.5}] and out["size"] == [7, 2]
    with pytest.raises(ConfigError, match=r"override --losses.2.weight: losses is a list of 2; '2' is not an index in 0..1"):
        apply_overrides(cfg, ["--losses.2.weight", "1"])
    with pytest.raises(ConfigError, match=r"'weight' is not an index"):
        apply_overrides(cfg, ["--losses.weight", "1"])
    with pytest.raises(ConfigError, match=r"losses.0.wieght"):
        apply_overrides(cfg, ["--losses.0.wieght", "1"])

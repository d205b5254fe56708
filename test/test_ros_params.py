"""Node parameters are checked like a ROS user expects (reloc_ros/ros/params.py, pure; the node and reloc-launch
use the same checks): ints for doubles, types, choices, ranges, structured values, unknown names with the closest
known one, ``-p`` values over the parameter file's, and ``-p`` values rcl dropped are named."""
import math
import subprocess
import sys

import pytest

from reloc_ros.ros.params import (LOCALIZER_PARAMS, MAPPER_PARAMS, ParamError, check_values, cli_param_values,
                                  dropped_cli_values, read_params_file, wants_help)

BY_NAME = {p.name: p for p in LOCALIZER_PARAMS}


def test_an_int_is_a_double_but_a_bool_is_not_a_number():
    assert BY_NAME["max_rate"].coerce(5) == 5.0 and isinstance(BY_NAME["max_rate"].coerce(5), float)
    assert BY_NAME["camera_to_base"].coerce([0, 0, 0, 0, 0, 0, 1]) == [0.0] * 6 + [1.0]
    with pytest.raises(ParamError, match="max_rate: expected a double, got True"):
        BY_NAME["max_rate"].coerce(True)
    with pytest.raises(ParamError, match="queue_depth: expected an integer, got 2.5"):
        BY_NAME["queue_depth"].coerce(2.5)
    with pytest.raises(ParamError, match="refine: expected a bool, got 'banana'"):
        BY_NAME["refine"].coerce("banana")


@pytest.mark.parametrize("name, value, needle", [
    ("image_transport", "foo", "one of ['raw', 'compressed']"),
    ("mode", "sometimes", "one of ['continuous', 'on_demand']"),
    ("min_confidence", -1.0, ">= 0, <= 1"),
    ("min_confidence", 1.5, ">= 0, <= 1"),
    ("queue_depth", 0, ">= 1"),
    ("max_rate", math.nan, "not a finite number"),
    ("camera_to_base", [1.0, 2.0], "7 finite values"),
    ("camera_to_base", [0.0] * 7, "zero norm"),
    ("refiner_options", '{"max_points": 1024', "not a JSON object"),
    ("front_end_options", "[1, 2]", "must be a JSON object"),
    ("device", "banana", "not a device"),
    ("front_end", "orb", "one of ['', "),
])
def test_bad_values_are_one_line_naming_the_parameter(name, value, needle):
    with pytest.raises(ParamError) as e:
        BY_NAME[name].coerce(value)
    msg = str(e.value)
    assert msg.startswith(f"parameter {name}: ") and needle in msg and "\n" not in msg


def test_defaults_pass_their_own_checks():
    for p in LOCALIZER_PARAMS + MAPPER_PARAMS:
        assert p.coerce(p.default) == p.default, p.name


def test_unknown_names_get_the_closest_known_one_and_ros_names_are_known():
    good, errors = check_values(LOCALIZER_PARAMS, {"min_confidenc": 0.3, "bogus": 3, "use_sim_time": True,
                                                   "qos_overrides./tf.publisher.depth": 10, "max_rate": 5})
    assert good == {"max_rate": 5.0}
    assert errors == ["unknown parameter 'min_confidenc'; did you mean 'min_confidence'? (config/*.yaml lists "
                      "every parameter)", "unknown parameter 'bogus' (config/*.yaml lists every parameter)"]


def test_cli_values_are_typed_as_yaml_and_dropped_ones_are_named():
    argv = ["prog", "--ros-args", "--params-file", "f.yaml", "-p", "refine:=banana", "-p", "max_rate:=5",
            "--param", "reloc_localizer:mode:=on_demand", "-p", "other_node:mode:=x", "--", "-p", "a:=1"]
    cli = cli_param_values(argv, "reloc_localizer")
    assert cli == {"refine": ("banana", "banana"), "max_rate": ("5", 5), "mode": ("on_demand", "on_demand")}
    # what rclpy got: the file's bool kept over the -p string (rcl's merge), the others applied
    errors = dropped_cli_values(cli, {"refine": False, "max_rate": 5, "mode": "on_demand"})
    assert len(errors) == 1 and errors[0].startswith("parameter refine: -p refine:=banana did not take effect")


def test_params_file_sections_for_the_node(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    refine: false\n    max_rate: 1.0\n"
                 "reloc_localizer:\n  ros__parameters:\n    max_rate: 2.0\n"
                 "other:\n  ros__parameters:\n    max_rate: 9.0\n")
    assert read_params_file(f, "reloc_localizer") == {"refine": False, "max_rate": 2.0}
    assert read_params_file(f, "loc2") == {"refine": False, "max_rate": 1.0}
    f.write_text("reloc_localizer:\n  max_rate: 2.0\n")
    with pytest.raises(ParamError, match="no ros__parameters"):
        read_params_file(f, "reloc_localizer")


def test_node_params_puts_cli_values_over_the_file_and_refuses_before_starting(tmp_path):
    from reloc_ros.ros.runner import _Raw, node_params
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    refine: false\n    max_rate: 2.0\n")
    got = node_params("localizer", "reloc_localizer", f, {"refine": _Raw("true"), "max_rate": _Raw("5"),
                                                          "map_path": tmp_path / "m.safetensors"})
    assert got == {"refine": True, "max_rate": 5.0, "map_path": str(tmp_path / "m.safetensors")}
    with pytest.raises(ParamError) as e:
        node_params("localizer", "reloc_localizer", f, {"refine": _Raw("banana"), "bogus": _Raw("3")})
    assert str(e.value).splitlines() == ["parameter refine: expected a bool, got 'banana' (a string)",
                                         "unknown parameter 'bogus' (config/*.yaml lists every parameter)"]


def test_reloc_launch_refuses_bad_parameters_before_starting_a_node(tmp_path):
    code = "import sys; from reloc_ros.ros.runner import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, "localizer", "--params", "config/localizer.yaml",
                        "-p", "bogus:=3", "-p", "image_transport:=foo", "-p", "max_rate:=5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "unknown parameter 'bogus'" in r.stderr and "image_transport: 'foo' is not allowed" in r.stderr
    assert "max_rate" not in r.stderr  # an int for a double is fine


def test_help_flag_is_the_programs_own_not_a_ros_argument():
    assert wants_help(["prog", "--help"]) and wants_help(["prog", "-h", "--ros-args"])
    assert not wants_help(["prog", "--ros-args", "-p", "x:=1", "--help"]) and not wants_help(["prog"])

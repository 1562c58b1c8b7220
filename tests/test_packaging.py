"""environment.yml lists exactly pyproject.toml's requirements, with the same lower bounds."""
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_environment_yml_is_in_step_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    lines = [line.strip()[2:].strip() for line in (ROOT / "environment.yml").read_text().splitlines()
             if line.strip().startswith("- ") and ">=" in line and not line.strip().startswith("- python")]
    assert set(lines) == wanted

"""Configuration errors name the path inside the file and its line, for the person editing it."""

from __future__ import annotations

import pytest

from sandboxd.config import ConfigError, parse_config

TEXT = """\
profiles:
  - display_name: default
    spec:
      resource_ceilings:
        cpu: "4"
        memory: MEMORY
runners:
  - runner_id: east
    bindings:
      - profile: default
        is_default: true
        overrides: {resource_ceilings: {pids: PIDS}}
"""


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "platform.yaml")
    return str(caught.value)


def test_a_bad_value_is_reported_at_its_line() -> None:
    message = refusal(TEXT.replace("MEMORY", "lots").replace("PIDS", "10"))
    assert message.startswith("platform.yaml: profiles[0].spec.resource_ceilings.memory (line 6): ")


def test_a_bad_override_is_reported_at_the_line_of_the_overrides() -> None:
    message = refusal(TEXT.replace("MEMORY", "1Gi").replace("PIDS", "many"))
    assert "runners[0].bindings[0].overrides.resource_ceilings.pids (line 12)" in message


def test_an_unknown_field_is_reported_at_the_mapping_that_holds_it() -> None:
    text = TEXT.replace("MEMORY", "1Gi").replace("PIDS", "10").replace('cpu: "4"', 'cpus: "4"')
    assert "resource_ceilings.cpus (line 5)" in refusal(text)


def test_broken_yaml_names_the_line() -> None:
    assert "not valid YAML (line 3)" in refusal("profiles:\n  - display_name: x\n   bad: [\n")

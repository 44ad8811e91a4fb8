"""What the examples' tests share: loading a script from examples/ as a
module, and checking that its command line documents every flag."""

import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def load_example(name):
    """examples/<name>.py as a module (its main() not run)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_every_flag_is_documented(example, capsys, required):
    """Every flag has help that --help prints, the `required` ones exist, and
    --steps 0 is refused with exit code 2 and a message."""
    parser = example.build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert set(required) <= {a.dest for a in flags}
    assert all(a.help and len(a.help) > 10 for a in flags)
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(a.option_strings[0] in text for a in flags)
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--steps", "0"])
    assert exit_info.value.code == 2
    assert "--steps must be at least 1" in capsys.readouterr().err

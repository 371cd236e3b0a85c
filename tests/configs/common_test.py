import pytest

from configs.common import parse_arg


def test_parse_arg_types_and_flags():
    c = parse_arg("model=qwen0.5b,runlocal,steps=7", model="smollm2", runlocal=False, steps=100)
    assert (c.model, c.runlocal, c.steps) == ("qwen0.5b", True, 7)
    assert parse_arg(None, steps=3).steps == 3


@pytest.mark.parametrize(
    "arg, message",
    [
        ("nope=1", "unknown key 'nope'"),
        ("steps=x", "'steps' expects int"),
        ("steps", "needs a value"),
    ],
)
def test_parse_arg_errors(arg, message):
    with pytest.raises(ValueError, match=message):
        parse_arg(arg, steps=1, runlocal=False)

"""Helpers shared by config files: `get_config(arg)` strings such as 'model=qwen0.5b,runlocal'."""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses 'k=v,flag' into a ConfigDict typed by `defaults`; unknown keys raise.

    A bare key sets a bool default to True. Values are converted with the default's type.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config arg: unknown key '{key}' (known: {sorted(defaults)})")
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config arg: '{key}' needs a value ({key}=...)")
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config arg: '{key}' expects true/false, got '{value}'")
            out[key] = value.lower() in ("true", "1")
        else:
            try:
                out[key] = type(default)(value)
            except ValueError:
                raise ValueError(
                    f"config arg: '{key}' expects {type(default).__name__}, got '{value}'"
                ) from None
    return out

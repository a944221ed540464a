from dataclasses import dataclass, field

import pytest

from vlcorpus.cli import COMMANDS, build_parser, declaration, main
from vlcorpus.config import ConfigError, load_config


@dataclass
class Inner:
    size: int = 1024


@dataclass
class Cfg:
    dpi: float = 72.0
    fmt: str = "jpg"
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None


def test_config_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("dpi: 100\ninner: {size: 512}\n")
    cfg = load_config(Cfg, f, ["fmt=png", "tags=[a, b]", "inner.size=256", "limit=3"])
    assert cfg == Cfg(dpi=100.0, fmt="png", tags=["a", "b"], inner=Inner(256), limit=3)


@pytest.mark.parametrize(
    "overrides, message",
    [(["dpy=3"], "unknown key"), (["fmt=3"], "fmt: expected str"), (["inner.sise=1"], "inner.sise"), (["dpi"], "key=value")],
)
def test_bad_config_stops_with_what_to_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, None, overrides)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_every_command_group_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser(["--help"]).parse_args(["--help"])
    assert e.value.code == 0
    assert "inspect" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser(["import", "text", "--help"]).parse_args(["import", "text", "--help"])
    assert "--retry-failed" in capsys.readouterr().out


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_prints_its_help(module, capsys):
    command, _ = declaration(module)
    argv = [*command, "--help"]
    with pytest.raises(SystemExit) as e:
        build_parser(argv).parse_args(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vlcorpus {' '.join(command)}") and "--help" in out


def test_version(capsys):
    from vlcorpus import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"vlcorpus {__version__}"


def test_only_the_command_run_is_imported():
    """Starting a job must not import the trainer (torch, transformers) or the paper renderers (PyMuPDF)."""
    import subprocess
    import sys

    code = ("import sys; from vlcorpus.cli import build_parser; build_parser(['import', 'text', 'x']); "
            "print(sorted(m for m in ('torch', 'transformers', 'pymupdf', 'trainer.train') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no such shard or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["import", "text", str(tmp_path)])  # --out missing
    assert e.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_local_ray_keeps_token_authentication_without_a_warning():
    import os
    import subprocess
    import sys

    code = ("import os; from vlcorpus.runtime import init_ray; init_ray(num_cpus=1); import ray; "
            "print(os.environ['RAY_AUTH_MODE'], ray.cluster_resources()['CPU'])")  # Ray sets the mode it chose
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "token 1.0"
    assert "Token authentication" not in res.stderr


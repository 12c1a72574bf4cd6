"""The timm-astro command: usage, dispatch, clear errors."""
import subprocess
import sys

import pytest

from timm_astro.cli import COMMANDS, main


def test_usage_lists_every_command(capsys):
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert 'usage: timm-astro COMMAND' in capsys.readouterr().out


def test_unknown_command_names_the_choices(capsys):
    assert main(['trian']) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and 'demo' in err


@pytest.mark.parametrize('command', list(COMMANDS))
def test_every_command_has_help(command, capsys):
    try:
        code = main([command, '--help'])
    except SystemExit as e:  # argparse exits after printing help
        code = e.code
    assert code == 0
    assert 'usage' in capsys.readouterr().out.lower()


def test_python_dash_m_and_console_script_agree():
    result = subprocess.run([sys.executable, '-m', 'timm_astro', '--help'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and 'galaxy10' in result.stdout

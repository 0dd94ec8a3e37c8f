"""The command line as a user meets it: exit codes and one-line errors (no services needed)."""

import pytest

from ..cli_helpers import assert_one_line_error, virtrbd


def test_help_and_version():
    assert virtrbd("--help").code == 0
    result = virtrbd("--version")
    assert result.code == 0 and result.out.startswith("virtrbd ")


@pytest.mark.parametrize("args, words", [
    ((), ["required"]),
    (("frobnicate",), ["invalid choice"]),
    (("create", "rbd/x"), ["--size"]),
    (("create", "rbd/x", "--size", "ten"), ["'ten' is not a size"]),
    (("lab", "up", "--osds", "0"), ["between 1 and 8"]),
    (("lab", "up", "--port", "80"), ["port between"]),
    (("lab", "up", "--store", "zfs"), ["invalid choice"]),
])
def test_usage_errors_exit_2_in_one_line(args, words):
    assert_one_line_error(virtrbd(*args), 2, *words)


def test_missing_config_exits_2_naming_the_file(tmp_path):
    path = tmp_path / "none.conf"
    assert_one_line_error(virtrbd("--config", str(path), "ls"), 2, str(path), "not found")


def test_config_from_environment(tmp_path):
    path = tmp_path / "env.conf"
    path.write_text("[ceph]\nmonitors = m\nkeyring = /k\nbogus = 1\n")
    assert_one_line_error(virtrbd("ls", env={"VIRTRBD_CONF": str(path)}), 2, str(path), "[ceph] bogus")


def test_bad_spec_exits_2_before_connecting(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("[ceph]\nmonitors = 192.0.2.1\nkeyring = /nonexistent\n")
    assert_one_line_error(virtrbd("--config", str(path), "create", "rbd/../x", "--size", "1M"), 2,
                          "invalid image spec 'rbd/../x'")


def test_config_options_lists_settings():
    result = virtrbd("config", "options")
    assert result.code == 0 and "client_mount_timeout" in result.out


def test_lab_env_without_lab(tmp_path):
    assert_one_line_error(virtrbd("lab", "--dir", str(tmp_path / "none"), "env"), 1, "no lab")


def test_progress_on_a_terminal_shows_percent_rate_and_time_left(mocker):
    import io

    from virtrbd.cli.progress import terminal_progress

    stderr = io.StringIO()
    stderr.isatty = lambda: True
    mocker.patch("sys.stderr", stderr)
    clock = mocker.patch("virtrbd.cli.progress.time.monotonic", return_value=100.0)
    report = terminal_progress("restore rbd/vm1")
    clock.return_value = 102.0
    report(256 << 20, 1024 << 20)                 # a quarter in 2 s: 128 MiB/s, 6 s to go
    assert stderr.getvalue() == "\rrestore rbd/vm1:  25%, 128.0 MiB/s, 6 s left   "
    clock.return_value = 108.0
    report(1024 << 20, 1024 << 20)
    assert stderr.getvalue().endswith("\rrestore rbd/vm1: 100%, 128.0 MiB/s   \n")


def test_progress_in_objects_shows_no_rate(mocker):
    import io

    from virtrbd.cli.progress import terminal_progress

    stderr = io.StringIO()
    stderr.isatty = lambda: True
    mocker.patch("sys.stderr", stderr)
    clock = mocker.patch("virtrbd.cli.progress.time.monotonic", return_value=100.0)
    report = terminal_progress("flattening rbd/vm1", counts_bytes=False)
    clock.return_value = 101.0
    report(64, 256)                                # librbd's flatten counts objects
    assert stderr.getvalue() == "\rflattening rbd/vm1:  25%, 3 s left   "


def test_no_progress_when_stderr_is_not_a_terminal(mocker):
    import io

    from virtrbd.cli.progress import terminal_progress

    mocker.patch("sys.stderr", io.StringIO())
    assert terminal_progress("backup rbd/vm1@s1") is None


# --- a call loads only the module of its command -----------------------------------------------------

@pytest.mark.parametrize("argv, command", [
    (["restore", "f.raw", "rbd/x"], "restore"),
    (["-v", "--debug", "ls"], "ls"),
    (["--config", "restore", "ls"], "ls"),           # a config file that happens to be called "restore"
    (["--conf", "restore", "ls"], "ls"),             # argparse takes abbreviations of --config too
    (["--config=restore", "ls"], "ls"),
    (["--help"], None),
    (["--help", "restore"], None),                   # the whole command's help, every subcommand in it
    (["-h", "ls"], None),
    (["--he", "ls"], None),
    (["restore", "--help"], "restore"),              # the subcommand's own help
    ([], None),
])
def test_the_command_word_is_found_past_the_options(argv, command):
    from virtrbd.cli.main import command_named
    assert command_named(argv) == command


def test_each_command_loads_its_own_module_and_the_table_lists_every_command():
    from virtrbd.cli.main import COMMAND_MODULES, build_parser

    def commands(parser):
        action, = [a for a in parser._actions if a.dest == "command"]
        return set(action.choices)

    every = commands(build_parser([]))
    assert every == {name for names in COMMAND_MODULES.values() for name in names}
    for names in COMMAND_MODULES.values():
        for name in names:
            assert commands(build_parser([name])) == set(names)


def test_a_command_call_does_not_import_the_other_commands():
    import subprocess
    import sys
    probe = ("import sys; from virtrbd.cli.main import build_parser; build_parser(['restore']); "
             "print(sorted(m for m in sys.modules if m.startswith(('virtrbd.cli.', 'virtrbd.lab'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "virtrbd.cli.backup_cmd" in loaded
    assert "virtrbd.cli.lab" not in loaded and "virtrbd.lab" not in loaded


def test_help_before_a_command_lists_every_command():
    result = virtrbd("--help", "restore")
    assert result.code == 0 and all(name in result.out for name in ("restore", "lab", "golden", "snap", "xml"))


def test_an_unknown_command_still_lists_them_all():
    result = virtrbd("frobnicate")
    assert_one_line_error(result, 2, "invalid choice")
    assert all(name in result.err for name in ("restore", "lab", "golden", "snap", "xml"))


def test_the_restore_command_connects_with_the_restore_settings(mocker, tmp_path):
    from virtrbd.backup.tuning import RESTORE_CONFIG
    from virtrbd.cli.main import main

    mocker.patch("virtrbd.cli.main.divert_native_stderr")     # in-process: keep pytest's stderr
    mocker.patch("logging.basicConfig")
    from virtrbd.backup import RestoreResult
    from virtrbd.config import BackupSettings
    storage = mocker.patch("virtrbd.storage.Storage")
    storage.return_value.spec.return_value = "rbd/x"
    storage.return_value.config.backup = BackupSettings()
    plan = mocker.patch("virtrbd.backup.plan_restore")
    mocker.patch("virtrbd.backup.restore", return_value=RestoreResult(
        image="rbd/x", chain=["b.raw"], snapshot="s1", size=1 << 20, written_bytes=1 << 20, seconds=0.1,
        replaced=False, created_snapshot=None, path="librbd"))
    assert main(["restore", str(tmp_path / "b.raw"), "rbd/x"]) == 0
    assert storage.call_args.kwargs["ceph_options"] == RESTORE_CONFIG
    plan.assert_called_once()

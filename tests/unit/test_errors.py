from virtrbd import errors


def test_messages_are_one_line():
    assert str(errors.CephError("a\n  b\tc")) == "a b c"


def test_exit_codes():
    assert errors.ConfigError("x").exit_code == 2
    assert errors.InvalidSpecError("x").exit_code == 2
    assert errors.InvalidXMLError("x").exit_code == 2
    assert errors.NotFoundError("x").exit_code == 1
    assert errors.LabError("x").exit_code == 1


def test_one_family():
    for cls in (errors.ConfigError, errors.AuthenticationError, errors.BusyError, errors.LibvirtError,
                errors.LabError, errors.HasDependentsError, errors.OperationTimeoutError):
        assert issubclass(cls, errors.VirtrbdError)

"""Running the real ``virtrbd`` command in a child process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str
    args: tuple[str, ...] = ()

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def virtrbd(*args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60) -> Result:
    full_env = dict(os.environ)
    full_env.update(env or {})
    done = subprocess.run([sys.executable, "-m", "virtrbd", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout)
    result = Result(done.returncode, done.stdout, done.stderr, tuple(args))
    RESULTS.append(result)
    return result


#: every CLI run of the session: the secret scan reads their outputs at the end
RESULTS: list[Result] = []


def assert_one_line_error(result: Result, code: int, *words: str) -> None:
    assert result.code == code, result
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("virtrbd: "), result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word in result.err, result.err

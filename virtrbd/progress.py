"""The one shape of a progress callback, for every long operation: ``progress(done, total)``.

librbd's own callbacks (flatten, rollback) are called the same way and must return 0 to go on; the
renderer in ``virtrbd.cli.common`` does, so its return value is left open here.
"""

from collections.abc import Callable

Progress = Callable[[int, int], object]

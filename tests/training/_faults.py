"""Fault injection for the file-writing tests: a process killed at the n-th file operation.

:class:`KillSwitch` counts, while armed, the calls to the operations a save is made of
(``os.replace``, ``os.fsync``, ``os.link``, ``os.unlink``, ``os.rmdir``,
``shutil.rmtree`` and any extra functions given) and raises :class:`Killed` at the
chosen one, before it runs. From then on the process is dead: the clean-up code that
``except``/``finally`` blocks would run does nothing (``rmtree`` returns, every other
counted operation raises again), as after a real ``kill -9``; :meth:`revive` ends that.
"""

from __future__ import annotations

import os
import shutil

_OS_OPS = ("replace", "fsync", "link", "unlink", "rmdir")


class Killed(BaseException):
    """The simulated kill (a BaseException, so that ``except Exception`` does not stop it)."""


class KillSwitch:
    def __init__(self, monkeypatch, extra: tuple[tuple[object, str], ...] = ()):
        self.armed = False
        self.dead = False
        self.at: int | None = None
        self.calls = 0
        self.log: list[str] = []
        targets = [(os, name) for name in _OS_OPS] + [(shutil, "rmtree")] + list(extra)
        for owner, name in targets:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), name))

    def _wrap(self, fn, name):
        def op(*args, **kwargs):
            if self.dead:
                if name == "rmtree":
                    return None
                raise Killed(f"{name} after the kill")
            if self.armed:
                if self.calls == self.at:
                    self.dead = True
                    raise Killed(f"killed before {name} (operation {self.calls})")
                self.calls += 1
                self.log.append(name)
            return fn(*args, **kwargs)

        return op

    def arm(self, at: int | None) -> None:
        """Count from now on and kill at operation ``at`` (``None``: only count)."""
        self.armed, self.dead, self.at, self.calls, self.log = True, False, at, 0, []

    def revive(self) -> None:
        self.armed = self.dead = False
